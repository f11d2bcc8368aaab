"""What Nova's own InstanceMetadata (nova/api/metadata/base.py) puts in the
config drive of an instance, for tests/it/guest.rs to compare with the
drive nova-docker gives the container.

usage: instance_metadata.py NOVA_CONF INSTANCE_UUID [ADMIN_PASS]
prints one JSON object: {path under openstack/latest/: text}
"""
import json
import sys

from nova import config, context, objects

objects.register_all()
conf, uuid = sys.argv[1], sys.argv[2]
admin_pass = sys.argv[3] if len(sys.argv) > 3 else None
config.parse_args(['instance_metadata', '--config-file', conf])

from nova.api.metadata import base  # noqa: E402  (after the config is read)

ctx = context.get_admin_context()
mapping = objects.InstanceMapping.get_by_instance_uuid(ctx, uuid)
with context.target_cell(ctx, mapping.cell_mapping) as cctx:
    instance = objects.Instance.get_by_uuid(
        cctx, uuid, expected_attrs=['metadata', 'system_metadata', 'keypairs', 'device_metadata',
                                    'info_cache', 'flavor', 'security_groups', 'numa_topology'])
    # As the libvirt driver builds its drive: the admin password as extra_md.
    extra_md = {'admin_pass': admin_pass} if admin_pass else None
    md = base.InstanceMetadata(instance, extra_md=extra_md)
    out = {}
    for path, data in md.metadata_for_config_drive():
        prefix = 'openstack/latest/'
        if path.startswith(prefix):
            out[path[len(prefix):]] = data.decode() if isinstance(data, bytes) else data
print(json.dumps(out))
