// Options over their defaults, resolved the same way in every part: a frozen defaults object and
// one merge in which a field given as undefined keeps its default, as if it had not been given.

/** The fields of `options` that are set (not undefined). */
export function definedFields<T extends object>(options: T | undefined): Partial<T> {
  return Object.fromEntries(Object.entries(options ?? {}).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** `defaults` with every set field of `options` over it. */
export function withDefaults<D extends object, O extends object>(defaults: D, options: O | undefined): D & O {
  return { ...defaults, ...definedFields(options) } as D & O;
}
