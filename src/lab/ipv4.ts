/** IPv4 arithmetic for lab subnets: addresses as unsigned 32-bit numbers. */
import { badInput } from '../errors.js';

export interface Cidr {
  base: number;
  prefix: number;
}

export function parseIp(s: string, what: string): number {
  const parts = s.split('.');
  if (parts.length !== 4 || parts.some((p) => !/^\d{1,3}$/.test(p) || Number(p) > 255)) {
    throw badInput('BAD_ADDRESS', `${what}: "${s}" is not an IPv4 address`);
  }
  return parts.reduce((a, p) => ((a << 8) | Number(p)) >>> 0, 0);
}

export function formatIp(n: number): string {
  return [24, 16, 8, 0].map((s) => (n >>> s) & 255).join('.');
}

export function mask(prefix: number): number {
  return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
}

export function parseCidr(s: string, what: string): Cidr {
  const m = /^([0-9.]+)\/(\d{1,2})$/.exec(s);
  if (!m || Number(m[2]) > 32) throw badInput('BAD_SUBNET', `${what}: "${s}" is not an IPv4 subnet like 192.168.77.0/24`);
  const prefix = Number(m[2]);
  const ip = parseIp(m[1] as string, what);
  return { base: (ip & mask(prefix)) >>> 0, prefix };
}

export function formatCidr(c: Cidr): string {
  return `${formatIp(c.base)}/${c.prefix}`;
}

export function contains(c: Cidr, ip: number): boolean {
  return (ip & mask(c.prefix)) >>> 0 === c.base;
}

export function overlaps(a: Cidr, b: Cidr): boolean {
  const p = Math.min(a.prefix, b.prefix);
  return (a.base & mask(p)) >>> 0 === (b.base & mask(p)) >>> 0;
}

/** The address with the same host part in another subnet of the same size. */
export function translate(ip: number, from: Cidr, to: Cidr): number {
  const host = (ip & ~mask(from.prefix)) >>> 0;
  return (to.base | host) >>> 0;
}
