/**
 * The ways an NBD conversation fails, each a RestorelabError so that the CLI
 * can print it with a hint. A server error carries the errno the server sent;
 * a protocol error means the bytes made no sense and the connection is dropped.
 */
import { RestorelabError } from '../errors.js';
import { NBD_ERROR_NAMES, OPTION_REPLY_ERROR_NAMES } from './constants.js';

/** The server sent bytes that break the protocol; the connection is unusable. */
export class NbdProtocolError extends RestorelabError {
  constructor(message: string) {
    super('NBD_PROTOCOL', `NBD protocol violation: ${message}`, {
      hint: 'the NBD server sent something this client cannot parse; check that the socket belongs to qemu-nbd or qemu-storage-daemon',
    });
    this.name = 'NbdProtocolError';
  }
}

/** The server answered a request with an error value (EIO, EINVAL, ...). */
export class NbdServerError extends RestorelabError {
  readonly errno: number;
  readonly errnoName: string;
  /** The disk offset the server attributed the error to, when it said so. */
  readonly errorOffset: number | undefined;

  constructor(errno: number, what: string, serverMessage: string | undefined, errorOffset?: number) {
    const name = NBD_ERROR_NAMES[errno] ?? `errno ${errno}`;
    const at = errorOffset === undefined ? '' : ` at offset ${errorOffset}`;
    const said = serverMessage ? `: ${serverMessage}` : '';
    super('NBD_SERVER_ERROR', `NBD server failed ${what} with ${name} (${errno})${at}${said}`, {
      hint: 'the image behind the NBD export could not be read there; check the image with `qemu-img check` and the server log',
    });
    this.name = 'NbdServerError';
    this.errno = errno;
    this.errnoName = name;
    this.errorOffset = errorOffset;
  }
}

/** The server refused a negotiation option (unknown export, unsupported context...). */
export class NbdOptionError extends RestorelabError {
  readonly replyType: number;

  constructor(option: string, replyType: number, serverMessage: string, hint: string) {
    const name = OPTION_REPLY_ERROR_NAMES[replyType] ?? `reply type 0x${replyType.toString(16)}`;
    super('NBD_OPTION_REFUSED', `NBD server refused ${option} with ${name}${serverMessage ? `: ${serverMessage}` : ''}`, { hint });
    this.name = 'NbdOptionError';
    this.replyType = replyType;
  }
}

/** A request or the handshake took longer than the client's timeout. */
export class NbdTimeoutError extends RestorelabError {
  constructor(what: string, ms: number) {
    super('NBD_TIMEOUT', `NBD ${what} got no answer within ${ms} ms`, {
      hint: 'the NBD server is stuck or overloaded; raise the timeout or check that the server process is alive',
    });
    this.name = 'NbdTimeoutError';
  }
}

/** The connection failed or closed while requests were outstanding. */
export class NbdConnectionError extends RestorelabError {
  constructor(message: string, cause?: unknown) {
    super('NBD_CONNECTION', message, {
      hint: 'check that the NBD server is running and that the socket path or address is right',
      cause,
    });
    this.name = 'NbdConnectionError';
  }
}
