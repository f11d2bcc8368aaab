"""tests/bench/run --moves [--moves-mb N] (issue 20's proof), on the "newest"
control plane, writing its own block of BENCHMARKS.md.

Rebuild, shelve, unshelve, same-host resize and cold migration of an instance
with N MiB (default 500) of random data written to its root disk, through the
Nova API, each beside the plain Docker commands that make the same move by
hand. The measuring is the ignored Rust test `moves_bench::bench`
(tests/it/moves_bench.rs): it starts two hosts of its own (A on the machine's
engine, B on a private dockerd, as the moves tests do), times every move,
checks the data where Nova says what becomes of it, removes everything it
made (also when it fails) and prints one line `MOVES_BENCH {json}`, which is
parsed here. tests/bench/run passes the integration-test binary it built,
run with `moves_bench::bench --ignored --exact --nocapture` (no rebuild).
"""
import json
import os

from bench import ROOT, BenchError, fmt_s, log, replace_block, sh
from port_density import header

MOVES_MARK_START = '<!-- bench-moves:start -->'
MOVES_MARK_END = '<!-- bench-moves:end -->'
MIB = 1024.0 * 1024.0

TITLES = {
    'rebuild': 'Rebuild, same image → ACTIVE',
    'shelve': 'Shelve → SHELVED_OFFLOADED (snapshot uploaded, container removed)',
    'unshelve': 'Unshelve onto the same host → ACTIVE',
    'resize': 'Same-host resize 128 → 256 MiB, confirmed → ACTIVE',
    'migrate': 'Cold migration A → B, confirmed → ACTIVE',
}


def fmt_mib(n):
    return '%.1f MiB' % (n / MIB)


def fmt_bytes(b):
    """What moved, from the test's byte counts (see the block's text)."""
    if not b:
        return '—'
    parts = []
    if b.get('committed_layer') is not None:
        parts.append('committed layer %s, on the engine' % fmt_mib(b['committed_layer']))
    g = b.get('glance', b)
    if g.get('glance_upload'):
        parts.append('Glance ↑ %s' % fmt_mib(g['glance_upload']))
    if g.get('glance_download'):
        parts.append('Glance ↓ %s' % fmt_mib(g['glance_download']))
    if b.get('pipe'):
        parts.append('engine → engine pipe %s' % fmt_mib(b['pipe']))
    return ', '.join(parts) if parts else 'none'


class MovesBench:
    """The step of tests/bench/run --moves (the interface of port_density's)."""

    def __init__(self, b):
        self.b = b
        self.res = {}

    def run(self):
        mb = self.b.cfg['mb']
        exe = self.b.args.net_bench_exe
        if exe:
            cmd = [exe, 'moves_bench::bench', '--ignored', '--exact', '--nocapture']
        else:
            cmd = ['cargo', 'test', '--release', '--test', 'integration', 'moves_bench::bench', '--', '--ignored',
                   '--exact', '--nocapture']
        log('moves of an instance with %d MiB written (the ignored test moves_bench::bench)' % mb)
        out = sh(cmd, timeout=3600, cwd=ROOT, env=dict(os.environ, ND_MOVES_MB=str(mb)))
        for line in out.splitlines():
            if line.startswith('MOVES_BENCH '):
                self.res = json.loads(line[len('MOVES_BENCH '):])
        if not self.res:
            raise BenchError('moves_bench::bench printed no MOVES_BENCH line:\n' + out[-1000:])
        self.b.r['moves'] = self.res
        for m in self.res['moves']:
            log('%s: ours %s, by hand %s' % (m['move'], fmt_s(m['ours_s']),
                                           ' / '.join(fmt_s(p['s']) for p in m['plain'])))

    def cleanup(self):
        """Nothing: the test removes what it made, also when it fails."""

    def write_report(self, path):
        r, res = self.b.r, self.res
        mb = self.b.cfg['mb']
        lines = header(r, 'Latest moves run: `tests/bench/run --moves%s`' % (
            '' if mb == 500 else ' --moves-mb %d' % mb), MOVES_MARK_START)
        if res:
            a_store, b_store = res.get('storage', ['?', '?'])
            lines += [
                'One instance per move (flavor m1.nano, the test busybox, `networks: none`) with %d MiB of random '
                'data written to its root disk (`dd if=/dev/urandom of=/data bs=1M count=%d` in the container), '
                'moved through the Nova API by our hosts: A on the machine\'s engine (%s), B on a private dockerd '
                '(%s, as the moves tests run it). Beside each, the same move by hand with plain Docker, on a plain '
                'container (`docker run -d --network none -m 128m`) with the same amount written. One round each, '
                'ours first, a `sync` before each.' % (mb, mb, a_store, b_store),
                '',
                'Time: nova-docker\'s is the action\'s POST to the first `GET /servers/<id>` (every 50 ms) showing '
                'the end state with no task state; a resize or migration is confirmed as soon as VERIFY_RESIZE '
                'shows (in brackets: the time to VERIFY_RESIZE). By hand: the commands\' wall time. Bytes: '
                'nova-docker\'s from its hosts\' `/metrics` (`nova_docker_glance_bytes_total`, before and after '
                'the move), the committed layer\'s size from `docker image inspect` (the image minus the one it '
                'was committed from); by hand: Glance\'s image size, or `wc -c` of the pipe. After each move the '
                'test checks what Nova says becomes of the data (the last column): a failed check fails the run '
                'and writes no figure. What nova-docker does beyond the commands by hand: Nova\'s API, conductor '
                'and (for a resize, a migration and an unshelve) scheduler round trips and Placement claims, every '
                'image it saves passed through its canonicalizer and every image it loads checked against '
                'Glance\'s `os_hash_value` (issue 17), and, between hosts, the move\'s Glance image deleted once '
                'the destination has loaded it.',
                '']
            lines += ['| Move | nova-docker, API → end state | Bytes moved by nova-docker | By hand (plain Docker) '
                      '| Time by hand | Bytes moved by hand | nova-docker ÷ by hand | Checked |',
                      '|---|---|---|---|---|---|---|---|']
            for m in res['moves']:
                ours = fmt_s(m['ours_s'])
                if m.get('ours_verify_s') is not None:
                    ours += ' (%s)' % fmt_s(m['ours_verify_s'])
                for n, p in enumerate(m['plain']):
                    first = n == 0
                    cells = [TITLES.get(m['move'], m['move']) if first else '〃',
                             ours if first else '〃', fmt_bytes(m['ours_bytes']) if first else '〃',
                             p['how'], fmt_s(p['s']), fmt_bytes(p['bytes']),
                             '%.2f×' % (m['ours_s'] / p['s']) if p['s'] else '—',
                             m.get('checked', '') if first else '〃']
                    lines.append('| %s |' % ' | '.join(str(c).replace('|', '\\|') for c in cells))
            lines.append('')
        lines.append(MOVES_MARK_END)
        replace_block(path, MOVES_MARK_START, MOVES_MARK_END, '\n'.join(lines))
