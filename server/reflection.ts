// gRPC server reflection, grpc.reflection.v1 and the older v1alpha that many tools still speak, so
// grpcurl, buf curl, Postman and friends can list and call our services without proto files.
//
// The descriptors come from the generated code: every protobuf-es DescFile keeps its
// FileDescriptorProto (`file.proto`), which is exactly what the protocol ships, serialized. Usage:
//
//   addReflection(server, { services: [GRPCInferenceService, RecommendationService, Health], shutdown });
//
// The two protocol versions are the same messages under two package names (identical field
// numbers), so one lookup answers both and only the response schema differs.
import {
  create,
  isMessage,
  toBinary,
  type DescEnum,
  type DescExtension,
  type DescFile,
  type DescMessage,
  type DescService,
  type MessageInitShape,
} from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code, grpc, serviceDefinition } from "../lib/grpc.js";
import * as v1 from "../gen/grpc/reflection/v1/reflection_pb.js";
import * as v1alpha from "../gen/grpc/reflection/v1alpha/reflection_pb.js";

export interface ReflectionOptions {
  /**
   * The services the server hosts (Health included). list_services names them plus both
   * reflection services; their files, and every file those import, can be fetched.
   */
  services: DescService[];
  /** More files to describe, e.g. messages that travel outside gRPC (logged predictions, events). @default [] */
  files?: DescFile[];
  /**
   * Ends open reflection streams when it fires. An interactive client (grpcurl describe, an IDE)
   * may keep its stream open, and grpc-js's tryShutdown waits for every open call.
   */
  shutdown?: AbortSignal;
}

/** grpc-js handlers for both protocol versions. */
export interface ReflectionImplementations {
  v1: grpc.UntypedServiceImplementation;
  v1alpha: grpc.UntypedServiceImplementation;
}

/** Handlers for grpc.reflection.v1 and v1alpha ServerReflection; add each under its own definition. */
export function reflectionImplementations(options: ReflectionOptions): ReflectionImplementations {
  const index = new DescriptorIndex([...options.services, v1.ServerReflection, v1alpha.ServerReflection], options.files ?? []);
  return {
    v1: { serverReflectionInfo: streamHandler(index, v1.ServerReflectionRequestSchema, v1.ServerReflectionResponseSchema, options.shutdown) },
    v1alpha: {
      serverReflectionInfo: streamHandler(index, v1alpha.ServerReflectionRequestSchema, v1alpha.ServerReflectionResponseSchema, options.shutdown),
    },
  };
}

/** Adds both reflection services to a grpc-js server. */
export function addReflection(server: grpc.Server, options: ReflectionOptions): void {
  const impl = reflectionImplementations(options);
  server.addService(serviceDefinition(v1.ServerReflection), impl.v1);
  server.addService(serviceDefinition(v1alpha.ServerReflection), impl.v1alpha);
}

/** The oneof of a ServerReflectionResponse, the same in v1 and v1alpha. */
type Answer =
  | { case: "fileDescriptorResponse"; value: { fileDescriptorProto: Uint8Array[] } }
  | { case: "allExtensionNumbersResponse"; value: { baseTypeName: string; extensionNumber: number[] } }
  | { case: "listServicesResponse"; value: { service: { name: string }[] } }
  | { case: "errorResponse"; value: { errorCode: number; errorMessage: string } };

const failure = (code: grpc.status, message: string): Answer => ({ case: "errorResponse", value: { errorCode: code, errorMessage: message } });

/** Everything reflection can be asked about, indexed once when the server starts. */
class DescriptorIndex {
  readonly serviceNames: string[];
  /** By file name ("streamserve/v1/recommendation.proto"). */
  private readonly files = new Map<string, DescFile>();
  /** Fully qualified symbol (service, method, message, field, oneof, enum, enum value, extension) → its file. */
  private readonly symbols = new Map<string, DescFile>();
  /** "extendee:number" → the file declaring that extension. */
  private readonly extensions = new Map<string, DescFile>();
  private readonly extensionNumbers = new Map<string, number[]>();
  private readonly encoded = new Map<string, Uint8Array>();

  constructor(services: DescService[], files: DescFile[]) {
    this.serviceNames = [...new Set(services.map((s) => s.typeName))].sort();
    for (const file of [...services.map((s) => s.file), ...files]) this.addFile(file);
  }

  answer(request: v1.ServerReflectionRequest, sent: Set<string>): Answer {
    const r = request.messageRequest;
    switch (r.case) {
      case "listServices":
        return { case: "listServicesResponse", value: { service: this.serviceNames.map((name) => ({ name })) } };
      case "fileByFilename": {
        const file = this.files.get(r.value);
        return file ? this.withDependencies(file, sent) : failure(Code.NOT_FOUND, `file not found: ${r.value}`);
      }
      case "fileContainingSymbol": {
        // Some clients send the protobuf-style fully qualified form with a leading dot.
        const symbol = r.value.replace(/^\./, "");
        const file = this.symbols.get(symbol);
        return file ? this.withDependencies(file, sent) : failure(Code.NOT_FOUND, `symbol not found: ${r.value}`);
      }
      case "fileContainingExtension": {
        const { containingType, extensionNumber } = r.value;
        const file = this.extensions.get(`${containingType}:${extensionNumber}`);
        return file ? this.withDependencies(file, sent) : failure(Code.NOT_FOUND, `extension not found: ${containingType} ${extensionNumber}`);
      }
      case "allExtensionNumbersOfType": {
        // A known message with no extensions has an empty list (as grpc-go and grpc-java answer);
        // only a type we do not know is NOT_FOUND.
        const type = r.value.replace(/^\./, "");
        const file = this.symbols.get(type);
        if (!file || !isMessageIn(file, type)) return failure(Code.NOT_FOUND, `message type not found: ${r.value}`);
        return { case: "allExtensionNumbersResponse", value: { baseTypeName: type, extensionNumber: this.extensionNumbers.get(type) ?? [] } };
      }
      default:
        return failure(Code.INVALID_ARGUMENT, "the request names no message_request");
    }
  }

  /**
   * The file first, then every file it imports, transitively. A client keeps what it received on
   * its stream, so a dependency already sent on this stream is not sent again; the requested file
   * always is, since the client asked for it by name.
   */
  private withDependencies(file: DescFile, sent: Set<string>): Answer {
    const out: Uint8Array[] = [];
    const seen = new Set<string>();
    const queue = [file];
    for (let f = queue.shift(); f; f = queue.shift()) {
      const name = f.proto.name;
      if (seen.has(name)) continue;
      seen.add(name);
      if (f === file || !sent.has(name)) {
        out.push(this.bytes(f));
        sent.add(name);
      }
      queue.push(...f.dependencies);
    }
    return { case: "fileDescriptorResponse", value: { fileDescriptorProto: out } };
  }

  private bytes(file: DescFile): Uint8Array {
    let b = this.encoded.get(file.proto.name);
    if (!b) {
      b = toBinary(FileDescriptorProtoSchema, file.proto);
      this.encoded.set(file.proto.name, b);
    }
    return b;
  }

  private addFile(file: DescFile): void {
    // First one wins: two copies of the same file (e.g. from two installs of a package) describe the same thing.
    if (this.files.has(file.proto.name)) return;
    this.files.set(file.proto.name, file);
    const symbol = (name: string) => {
      if (!this.symbols.has(name)) this.symbols.set(name, file);
    };
    for (const s of file.services) {
      symbol(s.typeName);
      for (const m of s.methods) symbol(`${s.typeName}.${m.name}`);
    }
    const addEnum = (e: DescEnum) => {
      symbol(e.typeName);
      // Enum values live in the scope that encloses the enum, as in C++: pkg.Outer.VALUE, not pkg.Outer.Enum.VALUE.
      const scope = e.typeName.slice(0, e.typeName.length - e.name.length);
      for (const v of e.values) symbol(`${scope}${v.name}`);
    };
    const addExtension = (x: DescExtension) => {
      symbol(x.typeName);
      this.extensions.set(`${x.extendee.typeName}:${x.number}`, file);
      const numbers = this.extensionNumbers.get(x.extendee.typeName) ?? [];
      numbers.push(x.number);
      this.extensionNumbers.set(x.extendee.typeName, numbers);
    };
    const addMessage = (m: DescMessage) => {
      symbol(m.typeName);
      for (const f of m.fields) symbol(`${m.typeName}.${f.name}`);
      for (const o of m.oneofs) symbol(`${m.typeName}.${o.name}`);
      // Map fields' synthetic entry messages (Foo.ParametersEntry) are in the descriptor but not in nestedMessages.
      for (const n of m.proto.nestedType) symbol(`${m.typeName}.${n.name}`);
      m.nestedMessages.forEach(addMessage);
      m.nestedEnums.forEach(addEnum);
      m.nestedExtensions.forEach(addExtension);
    };
    file.messages.forEach(addMessage);
    file.enums.forEach(addEnum);
    file.extensions.forEach(addExtension);
    file.dependencies.forEach((d) => this.addFile(d));
  }
}

function isMessageIn(file: DescFile, typeName: string): boolean {
  const visit = (ms: readonly DescMessage[]): boolean => ms.some((m) => m.typeName === typeName || visit(m.nestedMessages));
  return visit(file.messages);
}

/**
 * One ServerReflectionInfo stream: each request gets exactly one response, in order. A request that
 * cannot be answered gets an error_response and the stream carries on, as the protocol intends;
 * the stream ends when the client half-closes it (or the server shuts down).
 */
function streamHandler(index: DescriptorIndex, requestSchema: DescMessage, responseSchema: DescMessage, shutdown: AbortSignal | undefined) {
  return (call: grpc.ServerDuplexStream<unknown, unknown>) => {
    // Files this client already has, so dependencies go once per stream.
    const sent = new Set<string>();
    const finish = () => {
      shutdown?.removeEventListener("abort", finish);
      if (!call.cancelled && !call.writableEnded) call.end();
    };
    if (shutdown?.aborted) return finish();
    shutdown?.addEventListener("abort", finish, { once: true });
    call.once("cancelled", () => shutdown?.removeEventListener("abort", finish));
    call.on("end", finish);
    call.on("data", (request: unknown) => {
      if (call.cancelled || call.writableEnded) return;
      // lib/grpc.ts decodes leniently: a body that failed to decode arrives as something else.
      const valid = isMessage(request, requestSchema);
      let answer: Answer;
      try {
        answer = valid
          ? index.answer(request as unknown as v1.ServerReflectionRequest, sent)
          : failure(Code.INVALID_ARGUMENT, `request is not a valid ${requestSchema.typeName}`);
      } catch (err) {
        answer = failure(Code.INTERNAL, err instanceof Error ? err.message : String(err));
      }
      const init = {
        validHost: valid ? (request as v1.ServerReflectionRequest).host : "",
        originalRequest: valid ? request : undefined,
        messageResponse: answer,
      };
      // A client that sends faster than it reads: stop reading until it catches up.
      if (!call.write(create(responseSchema, init as MessageInitShape<DescMessage>))) {
        call.pause();
        call.once("drain", () => call.resume());
      }
    });
  };
}
