/**
 * The VGA text console: in text mode the adapter shows an 80x25 grid whose
 * cells live in the 32 KiB of text memory at guest-physical 0xB8000, two
 * bytes each (character in CP437, then an attribute: foreground in the low
 * nibble, background in the high). Reading it tells what the console says
 * without OCR; a guest that switched the adapter to graphics leaves no text
 * there (see docs/surebackup.md).
 *
 * Linux's vgacon scrolls by moving the adapter's start address through all
 * 32 KiB rather than by copying, so the screen on display is a 25-row window
 * somewhere in that memory, and the rows around it are the console's recent
 * history. Which window is shown is a CRTC register, not memory, and reading
 * it would mean writing the guest's VGA index port; we read the whole text
 * memory instead, as rows of 80, and treat it as console history
 * (dedupeVgaRows removes the copy vgacon leaves when it wraps around).
 *
 * Both drivers read it the same way, through the HMP `xp` command (QMP
 * human-monitor-command for the qemu driver, `virsh qemu-monitor-command
 * --hmp` for libvirt), so no file is written on the host and one parser
 * serves both.
 */
import { RestorelabError } from '../errors.js';

export const VGA_TEXT_BASE = 0xb8000;
export const VGA_COLS = 80;
/** The whole text memory (0xB8000-0xBFFFF): the screen plus vgacon's scrollback. */
export const VGA_TEXT_BYTES = 0x8000;

/** The HMP command that dumps the text buffer byte by byte. */
export const VGA_XP_COMMAND = `xp /${VGA_TEXT_BYTES}xb 0x${VGA_TEXT_BASE.toString(16)}`;

/**
 * Parses `xp /Nxb ADDR` output ("00000000000b8000: 0x53 0x07 ...", 8 bytes a
 * line) into bytes. Anything else (an HMP error message) is an error: a
 * half-parsed buffer would decode into a plausible but wrong screen.
 */
export function parseXpBytes(out: string, expected = VGA_TEXT_BYTES): Uint8Array {
  const bytes = new Uint8Array(expected);
  let n = 0;
  for (const raw of out.split(/\r?\n/)) {
    const line = raw.trim();
    if (line === '') continue;
    const m = /^([0-9a-f]+):((?:\s+0x[0-9a-f]{2})+)$/i.exec(line);
    if (!m) throw new RestorelabError('VGA_READ_FAILED', `unexpected monitor output reading the VGA text buffer: ${line.slice(0, 120)}`);
    const addr = parseInt(m[1]!, 16);
    if (addr !== VGA_TEXT_BASE + n)
      throw new RestorelabError('VGA_READ_FAILED', `VGA text buffer dump skips from offset ${n} to 0x${addr.toString(16)}`);
    for (const b of m[2]!.trim().split(/\s+/)) {
      if (n >= expected) throw new RestorelabError('VGA_READ_FAILED', `VGA text buffer dump is longer than ${expected} bytes`);
      bytes[n++] = parseInt(b.slice(2), 16);
    }
  }
  if (n !== expected) throw new RestorelabError('VGA_READ_FAILED', `VGA text buffer dump has ${n} of ${expected} bytes`);
  return bytes;
}

/** Code page 437, 0x80-0xFF (box drawing, accents); 0x00-0x1F are glyphs too but show as spaces here. */
const CP437_HIGH =
  'ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u00a0';

export function cp437(byte: number): string {
  if (byte >= 0x20 && byte < 0x7f) return String.fromCharCode(byte);
  if (byte >= 0x80) return CP437_HIGH[byte - 0x80]!;
  return ' ';
}

export interface VgaCell {
  char: string;
  fg: number;
  bg: number;
}

/**
 * Text memory as lines of `cols` characters, trailing blanks trimmed (char
 * bytes at even offsets, attributes at odd); `rows` defaults to every whole
 * row the buffer holds (25 for one screen, 204 for the 32 KiB).
 */
export function decodeVgaText(buf: Uint8Array, cols = VGA_COLS, rows = Math.floor(buf.length / (cols * 2))): string[] {
  if (rows < 1 || buf.length < cols * rows * 2)
    throw new RestorelabError('VGA_READ_FAILED', `VGA text buffer has ${buf.length} bytes, ${cols * Math.max(rows, 1) * 2} expected`);
  const lines: string[] = [];
  for (let r = 0; r < rows; r++) {
    let line = '';
    for (let c = 0; c < cols; c++) line += cp437(buf[(r * cols + c) * 2]!);
    lines.push(line.replace(/[\s\u00a0]+$/, ''));
  }
  return lines;
}

/** One cell with its colours (VGA palette indexes 0-15, background 0-7 when blinking is on). */
export function vgaCell(buf: Uint8Array, row: number, col: number, cols = VGA_COLS): VgaCell {
  const i = (row * cols + col) * 2;
  const attr = buf[i + 1] ?? 0x07;
  return { char: cp437(buf[i] ?? 0x20), fg: attr & 0x0f, bg: (attr >> 4) & 0x07 };
}

/** Rows compared as one block when looking for vgacon's wrap-around copy. */
const WRAP_BLOCK_ROWS = 12;

/**
 * Drops the second copy of any block of WRAP_BLOCK_ROWS rows that occurs
 * twice without overlapping: when vgacon reaches the end of text memory it
 * copies the screen back to the start, and the old rows stay behind until
 * overwritten. Without this a line on screen at that moment would be
 * counted twice. Only blocks of mostly different rows count: a crash loop
 * (a few lines over and over) is repetition the guest printed, not a copy.
 */
export function dedupeVgaRows(rows: string[], block = WRAP_BLOCK_ROWS): string[] {
  const drop = new Set<number>();
  const first = new Map<string, number>();
  for (let i = 0; i + block <= rows.length; i++) {
    const win = rows.slice(i, i + block);
    if (new Set(win.filter((l) => l !== '')).size < block / 2) continue;
    const key = win.join('\n');
    const at = first.get(key);
    if (at === undefined) {
      first.set(key, i);
      continue;
    }
    if (i - at >= block) for (let k = i; k < i + block; k++) drop.add(k);
  }
  return rows.filter((_, i) => !drop.has(i));
}
