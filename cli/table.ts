// Plain-text tables for CLI output a person reads.

export function formatTable(rows: Record<string, string | number>[]): string {
  if (!rows.length) return "";
  const columns = Object.keys(rows[0]!);
  const width = columns.map((c) => Math.max(c.length, ...rows.map((r) => String(r[c] ?? "").length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => c.padEnd(width[i]!))
      .join("  ")
      .trimEnd();
  return [line(columns), line(width.map((w) => "-".repeat(w))), ...rows.map((r) => line(columns.map((c) => String(r[c] ?? ""))))].join("\n");
}

export function printTable(rows: Record<string, string | number>[]): void {
  console.log(formatTable(rows));
}
