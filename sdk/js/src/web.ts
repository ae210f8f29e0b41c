// The few shapes of the web platform the SDK's public types name, declared here so that its
// declarations compile without DOM's lib (`lib: ["es2022"]`, `types: []`): the real `fetch`,
// `AbortSignal` and `Response` of every runtime fit them.

/** What the SDK needs of an `AbortSignal`; pass any runtime's real one. */
export interface AbortSignalLike {
  readonly aborted: boolean;
  readonly reason?: any;
  addEventListener(type: 'abort', listener: () => void, options?: { once?: boolean }): void;
  removeEventListener(type: 'abort', listener: () => void): void;
}

/** What the SDK reads of a `Response`. */
export interface ResponseLike {
  readonly ok: boolean;
  readonly status: number;
  readonly headers: { get(name: string): string | null };
  readonly body: BodyLike | null;
  text(): Promise<string>;
}

/** A response body being read (`ReadableStream<Uint8Array>`). */
export interface BodyLike {
  getReader(): { read(): Promise<{ done: boolean; value?: Uint8Array }> };
}

/** A `fetch`: the global one, or one of the caller's (tests, tracing, a custom agent). */
export type FetchLike = (
  input: string,
  init: { method: string; headers: Record<string, string>; body?: string; signal: any },
) => Promise<ResponseLike>;
