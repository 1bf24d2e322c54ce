/** Where Debian's ovmf puts the UEFI firmware: 4 MiB builds first (the 2 MiB ones are kept for old machine types); a code image and its variable store template must match in size. */
export interface OvmfBuild {
  /** The firmware image (read-only). */
  image: string;
  /** The empty variable store a domain copies. */
  varsTemplate: string;
}

export const OVMF_BUILDS: readonly OvmfBuild[] = [
  { image: '/usr/share/OVMF/OVMF_CODE_4M.fd', varsTemplate: '/usr/share/OVMF/OVMF_VARS_4M.fd' },
  { image: '/usr/share/OVMF/OVMF_CODE.fd', varsTemplate: '/usr/share/OVMF/OVMF_VARS.fd' },
];
