/** The parts of fuse-native (which ships no types) that the FUSE frontend uses. */
declare module 'fuse-native' {
  type Cb<T = never> = (err: number, value?: T) => void;
  type IoCb = (bytesOrErrno: number) => void;
  namespace Fuse {
    interface Operations {
      init?(cb: (err: number) => void): void;
      getattr?(path: string, cb: Cb<Record<string, unknown>>): void;
      fgetattr?(path: string, fd: number, cb: Cb<Record<string, unknown>>): void;
      readdir?(path: string, cb: Cb<string[]>): void;
      open?(path: string, flags: number, cb: Cb<number>): void;
      opendir?(path: string, flags: number, cb: Cb<number>): void;
      create?(path: string, mode: number, cb: Cb<number>): void;
      release?(path: string, fd: number, cb: (err: number) => void): void;
      releasedir?(path: string, fd: number, cb: (err: number) => void): void;
      read?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: IoCb): void;
      write?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: IoCb): void;
      flush?(path: string, fd: number, cb: (err: number) => void): void;
      fsync?(path: string, datasync: boolean, fd: number, cb: Cb<void>): void;
      truncate?(path: string, size: number, cb: Cb<void>): void;
      ftruncate?(path: string, fd: number, size: number, cb: Cb<void>): void;
      utimens?(path: string, atime: number, mtime: number, cb: Cb<void>): void;
      chmod?(path: string, mode: number, cb: Cb<void>): void;
      chown?(path: string, uid: number, gid: number, cb: Cb<void>): void;
      unlink?(path: string, cb: Cb<void>): void;
      rmdir?(path: string, cb: Cb<void>): void;
      mkdir?(path: string, mode: number, cb: Cb<void>): void;
      rename?(src: string, dest: string, cb: Cb<void>): void;
      symlink?(target: string, path: string, cb: Cb<void>): void;
      readlink?(path: string, cb: Cb<string>): void;
      statfs?(path: string, cb: Cb<Record<string, number>>): void;
    }
  }
  class Fuse {
    constructor(mnt: string, ops: Fuse.Operations, opts?: Record<string, unknown>);
    mount(cb: (err: Error | null) => void): void;
    unmount(cb: (err: Error | null) => void): void;
    static unmount(mnt: string, cb: (err: Error | null) => void): void;
    static EIO: number;
    static ENOENT: number;
  }
  export default Fuse;
}
