/**
 * bridge.js: a dependency-free browser client for Bridge's WebSocket protocol (`bridge.v1`,
 * SPEC section 4). One WebSocket carries any number of concurrent gRPC calls of every kind.
 *
 * ```js
 * import { Bridge } from "/static/bridge.js";
 *
 * const bridge = await Bridge.connect();              // ws(s)://<this host>/ws
 *
 * // Unary: a promise of the response message.
 * const user = await bridge.unary("demo.users.v1.UserService/GetUser", { id: "1" });
 *
 * // Server streaming: an async iterable; a failed call throws at the end.
 * for await (const tick of bridge.serverStream("demo.echo.v1.EchoService/Tick", { count: 3 })) {
 *   console.log(tick.text);
 * }
 *
 * // Client streaming: send, end, then await the one response.
 * const sum = bridge.clientStream("demo.echo.v1.EchoService/Sum");
 * sum.send({ value: 1 }); sum.send({ value: 2 }); sum.end();
 * console.log((await sum.response).total);
 *
 * // Bidirectional streaming: send at any time, iterate the replies.
 * const chat = bridge.bidi("demo.echo.v1.EchoService/Chat");
 * chat.send({ user: "ada", text: "hello" });
 * for await (const reply of chat) console.log(reply.text);
 * ```
 *
 * Messages are plain objects in the proto3 JSON mapping, exactly as the bridge's HTTP API
 * takes and returns them (int64 as strings, enums by name, bytes as base64).
 *
 * Every call takes {@link CallOptions}: `metadata`, `timeout` (in seconds, as on the wire),
 * `signal` (an AbortSignal that cancels it), `onheaders`, `maxBuffered`. Each stream object
 * also has `headers` (a promise of the initial metadata) and `status` (a promise of how it
 * ended that never rejects).
 *
 * Failures are {@link BridgeError}s carrying the gRPC status: `.code` (a number, see
 * {@link Code}), `.statusMessage`, `.details` (the status details, each an `Any` with
 * `@type`) and `.metadata` (the trailers). When the socket closes, every call still open
 * fails with UNAVAILABLE (14). An `error` frame (something this side sent that the bridge
 * could not tie to a call) goes to `bridge.onerror`; the connection stays open.
 *
 * Cancelling: `stream.cancel()`, leaving a `for await` loop early, or aborting `signal`
 * sends `cancel` and ends the call here at once: iteration stops quietly, and a promise
 * still waiting for a response rejects with CANCELLED (1).
 *
 * Receiving side and backpressure: a browser WebSocket delivers frames as fast as they
 * arrive and offers no way to slow the sender down, so each call keeps its own queue of
 * received messages, which the call's iterator hands out in order. Calls never share a
 * queue, so a stream that is read slowly does not hold up any other call. The queue is
 * unbounded unless you pass `maxBuffered`: a call whose queue would grow past it is
 * cancelled and fails with RESOURCE_EXHAUSTED instead of growing memory.
 *
 * @module bridge
 */

/** The WebSocket subprotocol this client speaks. */
export const SUBPROTOCOL = "bridge.v1";

/** gRPC status codes by name. */
export const Code = Object.freeze({
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
});

const CODE_NAMES = Object.fromEntries(Object.entries(Code).map(([name, code]) => [code, name]));

/**
 * The name of a gRPC status code, e.g. `codeName(5) === "NOT_FOUND"`.
 * @param {number} code
 * @returns {string}
 */
export function codeName(code) {
  return CODE_NAMES[code] ?? `CODE_${code}`;
}

/**
 * A call that ended with a status other than OK, or a connection-level error.
 * Its `message` reads like `NOT_FOUND: user "9" not found`.
 */
export class BridgeError extends Error {
  /**
   * @param {number} code gRPC status code.
   * @param {string} [statusMessage] The status message.
   * @param {object} [extra]
   * @param {Array<object>} [extra.details] `google.rpc.Status.details` (Any, with `@type`).
   * @param {Object<string,string>} [extra.metadata] The call's trailers.
   * @param {Object<string,string>} [extra.headers] The call's initial metadata, if any came.
   */
  constructor(code, statusMessage = "", { details = [], metadata = {}, headers = {} } = {}) {
    super(statusMessage ? `${codeName(code)}: ${statusMessage}` : codeName(code));
    this.name = "BridgeError";
    /** @type {number} gRPC status code (see {@link Code}). */
    this.code = code;
    /** @type {string} The status message as the bridge sent it. */
    this.statusMessage = statusMessage;
    /** @type {Array<object>} The status details (`google.rpc.Status.details`, each with `@type`). */
    this.details = details;
    /** @type {Object<string,string>} Trailing metadata. */
    this.metadata = metadata;
    /** @type {Object<string,string>} Initial metadata ({} when none came). */
    this.headers = headers;
  }

  /**
   * The error for a call's final status.
   * @param {Status} status
   * @returns {BridgeError}
   */
  static fromStatus(status) {
    return new BridgeError(status.code, status.message, {
      details: status.details,
      metadata: status.trailers,
      headers: status.headers,
    });
  }
}

/**
 * How a call ended.
 * @typedef {object} Status
 * @property {number} code gRPC status code (0 = OK).
 * @property {string} message
 * @property {Array<object>} details `google.rpc.Status.details`.
 * @property {Object<string,string>} trailers Trailing metadata.
 * @property {Object<string,string>} headers Initial metadata ({} when none came).
 */

/**
 * Options every call takes.
 * @typedef {object} CallOptions
 * @property {Object<string,string>} [metadata] Request metadata (sent to the backend).
 * @property {number} [timeout] Deadline in seconds (the bridge caps it by the upstream's).
 * @property {AbortSignal} [signal] Aborting it cancels the call.
 * @property {(headers: Object<string,string>) => void} [onheaders] Called with the
 *   backend's initial metadata when it arrives (also available as the `headers` promise).
 * @property {number} [maxBuffered] Most received messages to hold for a slow reader
 *   before the call is cancelled with RESOURCE_EXHAUSTED (default: no limit).
 */

/**
 * The default endpoint: `/ws` on the host that served the page, `wss:` under `https:`.
 * @returns {string}
 */
export function defaultUrl() {
  return toWebSocketUrl("/ws");
}

function toWebSocketUrl(url) {
  const resolved = new URL(url, globalThis.location?.href);
  if (resolved.protocol === "http:") resolved.protocol = "ws:";
  if (resolved.protocol === "https:") resolved.protocol = "wss:";
  return resolved.href;
}

/**
 * A connection to the bridge; make one with {@link Bridge.connect}. Calls on it are
 * independent: each gets its own id (allocated here, 1, 2, 3, ...), queue and status.
 */
export class Bridge {
  /**
   * Open a WebSocket to the bridge and resolve once it is open.
   * @param {string} [url] `ws:`/`wss:` URL, or an http(s) or relative one (default `/ws`).
   * @returns {Promise<Bridge>} Rejects with UNAVAILABLE when the socket cannot open.
   */
  static connect(url = defaultUrl()) {
    const socket = new WebSocket(toWebSocketUrl(url), SUBPROTOCOL);
    return new Promise((resolve, reject) => {
      const failed = (event) => {
        socket.removeEventListener("open", opened);
        const code = event.code ? ` (close code ${event.code})` : "";
        reject(new BridgeError(Code.UNAVAILABLE, `cannot connect to ${socket.url}${code}`));
      };
      const opened = () => {
        socket.removeEventListener("close", failed);
        resolve(new Bridge(socket));
      };
      socket.addEventListener("open", opened, { once: true });
      socket.addEventListener("close", failed, { once: true });
    });
  }

  /**
   * Wrap an open WebSocket (prefer {@link Bridge.connect}).
   * @param {WebSocket} socket
   */
  constructor(socket) {
    /** @type {WebSocket} */
    this.socket = socket;
    /**
     * Called with a {@link BridgeError} for each `error` frame: a frame of ours the bridge
     * could not tie to a call. The connection stays open. Default: `console.warn`.
     * @type {(error: BridgeError) => void}
     */
    this.onerror = (error) => console.warn("bridge:", error.message);
    /**
     * Called once with the CloseEvent when the connection closes.
     * @type {?(event: CloseEvent) => void}
     */
    this.onclose = null;
    this._calls = new Map();
    this._nextId = 1;
    this._closed = null;
    socket.addEventListener("message", (event) => this._receive(event.data));
    socket.addEventListener("close", (event) => this._onClose(event));
  }

  /** True until the connection closes. */
  get open() {
    return this._closed === null;
  }

  /** The number of calls still open on this connection. */
  get activeCalls() {
    return this._calls.size;
  }

  /**
   * Make a unary call.
   * @param {string} method `package.Service/Method`.
   * @param {object} [message] The request (default `{}`).
   * @param {CallOptions} [options]
   * @returns {Promise<object>} The response; rejects with a {@link BridgeError}.
   */
  async unary(method, message = {}, options = {}) {
    const call = this._start(method, message, options);
    const status = await call.status;
    if (status.code !== Code.OK) throw BridgeError.fromStatus(status);
    const response = await call.next();
    if (response.done) throw new BridgeError(Code.INTERNAL, `${method} sent no response`);
    return response.value;
  }

  /**
   * Start a server-streaming call.
   * @param {string} method `package.Service/Method`.
   * @param {object} [message] The request (default `{}`).
   * @param {CallOptions} [options]
   * @returns {ResponseStream} Iterate it with `for await`.
   */
  serverStream(method, message = {}, options = {}) {
    return new ResponseStream(this._start(method, message, options));
  }

  /**
   * Start a client-streaming call: `send()` the requests, `end()`, await `response`.
   * @param {string} method `package.Service/Method`.
   * @param {CallOptions} [options]
   * @returns {ClientStream}
   */
  clientStream(method, options = {}) {
    return new ClientStream(this._start(method, undefined, options));
  }

  /**
   * Start a bidirectional streaming call: `send()` at any time, iterate the responses.
   * @param {string} method `package.Service/Method`.
   * @param {CallOptions} [options]
   * @returns {BidiStream}
   */
  bidi(method, options = {}) {
    return new BidiStream(this._start(method, undefined, options));
  }

  /**
   * Close the connection. Open calls fail at once with UNAVAILABLE (the bridge cancels
   * them on its side), and so does any call started afterwards.
   * @param {number} [code] WebSocket close code.
   * @param {string} [reason]
   */
  close(code = 1000, reason = "") {
    this._failAll(`closed by the client (close code ${code})`);
    this.socket.close(code, reason);
  }

  _start(method, message, options) {
    const id = this._nextId++;
    const call = new CallState(this, id, method, options);
    if (!this.open) {
      call.finish(localStatus(Code.UNAVAILABLE, `connection closed (${this._closed})`));
      return call;
    }
    this._calls.set(id, call);
    const frame = { id, method };
    if (message !== undefined) frame.message = message;
    if (options.metadata) frame.metadata = options.metadata;
    if (options.timeout !== undefined) frame.timeout = options.timeout;
    this._send(frame);
    return call;
  }

  _send(frame) {
    if (this.open && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(frame));
    }
  }

  _forget(id) {
    this._calls.delete(id);
  }

  _receive(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      this._reportError(Code.INTERNAL, "the bridge sent a frame that is not JSON");
      return;
    }
    if (frame?.error !== undefined) {
      this._reportError(frame.error?.code ?? Code.UNKNOWN, frame.error?.message ?? "");
      return;
    }
    // Frames for a call this side already finished (e.g. cancelled) are dropped.
    this._calls.get(frame?.id)?.receive(frame);
  }

  _reportError(code, message) {
    this.onerror?.(new BridgeError(code, message));
  }

  _onClose(event) {
    this._failAll(`close code ${event.code}${event.reason ? `: ${event.reason}` : ""}`);
    this.onclose?.(event);
  }

  /** Mark the connection closed and fail every open call with UNAVAILABLE. */
  _failAll(why) {
    this._closed ??= why;
    const status = localStatus(Code.UNAVAILABLE, `connection closed (${this._closed})`);
    for (const call of [...this._calls.values()]) call.finish(status);
    this._calls.clear();
  }
}

function localStatus(code, message) {
  return { code, message, details: [], trailers: {}, headers: {} };
}

/**
 * One call's state on this side: its queue of received messages, its headers and status.
 * Shared by the public call objects; not exported.
 */
class CallState {
  constructor(bridge, id, method, options) {
    this.bridge = bridge;
    this.id = id;
    this.method = method;
    this.maxBuffered = options.maxBuffered ?? Infinity;
    this.onheaders = options.onheaders;
    this.queue = [];
    this.waiting = null; // { resolve, reject } of a next() waiting for a message or the end
    this.ended = false; // end() was called
    this.result = null; // the final Status once known
    this.cancelledHere = false; // cancel() ended it: iterators finish without an error
    this.receivedHeaders = null;
    this.headers = new Promise((resolve) => (this._resolveHeaders = resolve));
    this.status = new Promise((resolve) => (this._resolveStatus = resolve));
    this._watch(options.signal);
  }

  _watch(signal) {
    if (!signal) return;
    if (signal.aborted) queueMicrotask(() => this.cancel());
    else signal.addEventListener("abort", () => this.cancel(), { once: true });
  }

  get done() {
    return this.result !== null;
  }

  receive(frame) {
    if (this.done) return;
    if (frame.headers !== undefined) this._gotHeaders(frame.headers ?? {});
    if (frame.message !== undefined) this._push(frame.message);
    if (frame.status !== undefined) this._gotStatus(frame);
  }

  _gotHeaders(headers) {
    this.receivedHeaders = headers;
    this._resolveHeaders(headers);
    this.onheaders?.(headers);
  }

  _gotStatus(frame) {
    const { code = Code.UNKNOWN, message = "", details = [] } = frame.status ?? {};
    this.finish({
      code,
      message,
      details,
      trailers: frame.trailers ?? {},
      headers: this.receivedHeaders ?? {},
    });
  }

  _push(message) {
    if (this.waiting) {
      const { resolve } = this.waiting;
      this.waiting = null;
      resolve({ value: message, done: false });
      return;
    }
    if (this.queue.length >= this.maxBuffered) {
      this.cancel(Code.RESOURCE_EXHAUSTED, `more than ${this.maxBuffered} messages buffered`);
      return;
    }
    this.queue.push(message);
  }

  /** End the call with a status; messages already queued stay readable. */
  finish(status) {
    if (this.done) return;
    this.result = status;
    this.bridge._forget(this.id);
    this._resolveHeaders(this.receivedHeaders ?? {});
    this._resolveStatus(status);
    if (this.waiting) {
      const { resolve, reject } = this.waiting;
      this.waiting = null;
      this._settleEnd(resolve, reject);
    }
  }

  _settleEnd(resolve, reject) {
    if (this.result.code === Code.OK || this.cancelledHere) resolve({ value: undefined, done: true });
    else reject(BridgeError.fromStatus(this.result));
  }

  /** The next received message, in order; throws the status error after the last one. */
  next() {
    if (this.queue.length) return Promise.resolve({ value: this.queue.shift(), done: false });
    if (this.done) return new Promise((resolve, reject) => this._settleEnd(resolve, reject));
    if (this.waiting) return Promise.reject(new Error("next() called while another is pending"));
    return new Promise((resolve, reject) => (this.waiting = { resolve, reject }));
  }

  send(message) {
    if (this.ended) throw new Error(`${this.method}: send() after end()`);
    if (!this.done) this.bridge._send({ id: this.id, message });
  }

  end() {
    if (this.ended) return;
    this.ended = true;
    if (!this.done) this.bridge._send({ id: this.id, end: true });
  }

  /**
   * Cancel on the bridge and finish here at once. A plain cancel() drops what is queued and
   * lets iterators end quietly (promises waiting for a response reject with CANCELLED); any
   * other code keeps the queue readable and is thrown after it.
   */
  cancel(code = Code.CANCELLED, message = "cancelled by the client") {
    if (this.done) return;
    this.bridge._send({ id: this.id, cancel: true });
    this.cancelledHere = code === Code.CANCELLED;
    if (this.cancelledHere) this.queue.length = 0;
    this.finish({ ...localStatus(code, message), headers: this.receivedHeaders ?? {} });
  }
}

/**
 * The responses of a server-streaming call, as an async iterable:
 * `for await (const message of stream) ...`. Messages come in order; when the call fails,
 * the loop throws its {@link BridgeError} after the messages received before the failure.
 * Leaving the loop early (`break`, `return`, an exception) cancels the call.
 */
export class ResponseStream {
  /** @param {CallState} call */
  constructor(call) {
    this._call = call;
    /** @type {number} The call id on the connection. */
    this.id = call.id;
    /** @type {Promise<Object<string,string>>} Initial metadata ({} if the call ends without). */
    this.headers = call.headers;
    /** @type {Promise<Status>} How the call ended; never rejects. */
    this.status = call.status;
  }

  /** @returns {Promise<IteratorResult<object>>} The next message, or done at the end. */
  next() {
    return this._call.next();
  }

  /** Called when a `for await` loop exits early: cancels the call. */
  async return() {
    this._call.cancel();
    return { value: undefined, done: true };
  }

  /** Cancel the call (the backend sees it); iteration ends without an error. */
  cancel() {
    this._call.cancel();
  }

  [Symbol.asyncIterator]() {
    return this;
  }
}

/**
 * A bidirectional streaming call: {@link ResponseStream} plus `send()` and `end()`.
 */
export class BidiStream extends ResponseStream {
  /**
   * Send one request message.
   * @param {object} message
   * @throws {Error} after `end()`. Ignored once the call is over.
   */
  send(message) {
    this._call.send(message);
  }

  /** Half-close: no more request messages; responses keep coming. */
  end() {
    this._call.end();
  }
}

/**
 * A client-streaming call: `send()` the requests, `end()`, then await `response`.
 */
export class ClientStream {
  /** @param {CallState} call */
  constructor(call) {
    this._call = call;
    /** @type {number} The call id on the connection. */
    this.id = call.id;
    /** @type {Promise<Object<string,string>>} Initial metadata ({} if the call ends without). */
    this.headers = call.headers;
    /** @type {Promise<Status>} How the call ended; never rejects. */
    this.status = call.status;
    this._responsePromise = null;
  }

  /**
   * The response, once the call ends; rejects with a {@link BridgeError}.
   * (Made on first use, so a call nobody awaits leaves no unhandled rejection.)
   * @type {Promise<object>}
   */
  get response() {
    this._responsePromise ??= this._response();
    return this._responsePromise;
  }

  async _response() {
    const status = await this._call.status;
    if (status.code !== Code.OK) throw BridgeError.fromStatus(status);
    const response = await this._call.next();
    if (response.done) throw new BridgeError(Code.INTERNAL, `${this._call.method} sent no response`);
    return response.value;
  }

  /**
   * Send one request message.
   * @param {object} message
   * @throws {Error} after `end()`. Ignored once the call is over.
   */
  send(message) {
    this._call.send(message);
  }

  /** Half-close: the backend sees the end of the requests and answers. */
  end() {
    this._call.end();
  }

  /** Cancel the call; `response` rejects with CANCELLED. */
  cancel() {
    this._call.cancel();
  }
}
