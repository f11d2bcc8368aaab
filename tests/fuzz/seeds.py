#!/usr/bin/python3
"""Writes the fuzzer's seed corpus: small archives of each layout the host
accepts (legacy and OCI `docker save`, a symlinked layer, gzip outer and
layer compression, volumes, tags), so the fuzzer starts from valid input.

usage: seeds.py DIR
"""
import gzip
import hashlib
import io
import json
import sys
import tarfile


def tar_of(entries):
    """entries: (name, bytes) for files, (name, None) for dirs,
    (name, ('link', target)) for symlinks."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w', format=tarfile.USTAR_FORMAT) as t:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                t.addfile(info)
            elif isinstance(data, tuple):
                info.type = tarfile.SYMTYPE
                info.linkname = data[1]
                t.addfile(info)
            else:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def image(layout, layers, tags=('demo:latest',), volumes=None, gzip_layers=False):
    diff_ids = ['sha256:' + hashlib.sha256(l).hexdigest() for l in layers]
    cfg = {'architecture': 'amd64', 'os': 'linux', 'config': {'Cmd': ['/bin/sh']},
           'rootfs': {'type': 'layers', 'diff_ids': diff_ids}}
    if volumes:
        cfg['config']['Volumes'] = {v: {} for v in volumes}
    cfg = json.dumps(cfg).encode()
    digest = hashlib.sha256(cfg).hexdigest()
    blobs = [gzip.compress(l) if gzip_layers else l for l in layers]
    entries = []
    if layout == 'oci':
        paths = ['blobs/sha256/' + hashlib.sha256(b).hexdigest() for b in blobs]
        entries += [('blobs/', None), ('blobs/sha256/', None)]
        entries += list(zip(paths, blobs))
        config_path = 'blobs/sha256/' + digest
        entries.append((config_path, cfg))
        entries.append(('index.json', b'{"schemaVersion":2,"manifests":[]}'))
        entries.append(('oci-layout', b'{"imageLayoutVersion":"1.0.0"}'))
    else:
        paths = []
        for i, b in enumerate(blobs):
            d = '%064x' % (i + 1)
            entries += [(d + '/', None), (d + '/VERSION', b'1.0'), (d + '/json', b'{"id":"%s"}' % d.encode())]
            if layout == 'symlink' and i > 0:
                entries.append((d + '/layer.tar', ('link', '../%064x/layer.tar' % 1)))
                b = blobs[0]
            else:
                entries.append((d + '/layer.tar', b))
            paths.append(d + '/layer.tar')
        config_path = digest + '.json'
        entries.append((config_path, cfg))
        entries.append(('repositories', b'{"demo":{"latest":"1"}}'))
    manifest = [{'Config': config_path, 'RepoTags': list(tags), 'Layers': paths}]
    entries.append(('manifest.json', json.dumps(manifest).encode()))
    return tar_of(entries)


def main():
    out = sys.argv[1]
    one = tar_of([('bin/', None), ('bin/sh', b'#!busybox\n' * 8)])
    two = tar_of([('etc/hostname', b'x\n')])
    seeds = {
        'legacy': image('legacy', [one]),
        'oci': image('oci', [one, two], tags=('a:b', 'glance/x:latest')),
        'symlink': image('symlink', [one, one]),
        'volumes': image('legacy', [one], volumes=['/data', '/var/lib/db']),
        'gzip-layers': image('oci', [one], gzip_layers=True),
    }
    seeds['gzip-outer'] = gzip.compress(seeds['legacy'])
    for name, data in seeds.items():
        # The fuzz target reads its first byte as a chunk size.
        with open('%s/%s' % (out, name), 'wb') as f:
            f.write(b'\x07' + data)


if __name__ == '__main__':
    main()
