"""Create neutron's schema on SQLite from its models.

usage: python nd_neutron_schema.py sqlite:////abs/path/neutron.sqlite
then:  neutron-db-manage --config-file neutron.conf stamp heads

neutron's alembic migrations cannot run on SQLite ("No support for ALTER of
constraints in SQLite dialect"), so build the head schema from the models, as
neutron's unit tests do (harness.md, failure 5).
"""
import sys

import sqlalchemy as sa
from neutron.db.migration.models import head

engine = sa.create_engine(sys.argv[1])
head.get_metadata().create_all(engine)
print('neutron schema: %d tables' % len(sa.inspect(engine).get_table_names()))
