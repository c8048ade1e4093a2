// status --wait's progress drawing (src/cli/progress-bar.ts): in place on a terminal, cut to its
// width; a line per change elsewhere; nothing drawn twice.
import { describe, expect, it } from 'vitest';
import { ProgressBar } from '../../src/cli/progress-bar.js';

function drawn(tty: boolean, columns?: number) {
  const out: string[] = [];
  return { out, bar: new ProgressBar((t) => out.push(t), tty, columns) };
}

describe('ProgressBar', () => {
  it('on a terminal, redraws one line with \\r, only when the whole percent or the message changes, and ends it with a newline', () => {
    const { out, bar } = drawn(true, 80);
    bar.update({ value: 0.451, message: 'page 9' });
    bar.update({ value: 0.4549, message: 'page 9' });
    bar.update({ value: 1.2 });
    bar.end();
    expect(out).toEqual(['\r[#########...........]  45%  page 9\x1b[K', '\r[####################] 100%\x1b[K', '\n']);
  });

  it('cuts a long message to the width, so the line never wraps', () => {
    const { out, bar } = drawn(true, 40);
    bar.update({ value: 0.5, message: `a very long message\nthat goes on and on` });
    expect(out[0]).toBe('\r[##########..........]  50%  a very lo…\x1b[K');
    expect(out[0]!.replace('\r', '').replace('\x1b[K', '').length).toBe(39);
  });

  it('elsewhere, writes one plain line per change and nothing at the end', () => {
    const { out, bar } = drawn(false);
    bar.update({ value: 0.25, message: 'reading' });
    bar.update({ value: 0.25, message: 'reading' });
    bar.update({ value: 0.5 });
    bar.end();
    expect(out).toEqual(['progress  25%  reading\n', 'progress  50%\n']);
  });
});
