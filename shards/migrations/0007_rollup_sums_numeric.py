"""Rollup sums become numeric, counts bigint: aggregates that cannot overflow.

Any finite float is a legal reading, and two of 1.7e308 sum past the float8 range;
a float8 sum() then fails the statement, and with it every rollup batch of the
shard. numeric holds any sum exactly. One ALTER TABLE for both columns, so the
table is rewritten once (it holds an exclusive lock while it does: the rollup
table is small next to the readings). Going back clamps sums to the float8 range.
"""

from django.db import migrations, models

import shards.models

FORWARD = """
    ALTER TABLE shards_readingrollup
        ALTER COLUMN count TYPE bigint,
        ALTER COLUMN sum TYPE numeric USING sum::numeric
"""
BACKWARD = """
    ALTER TABLE shards_readingrollup
        ALTER COLUMN count TYPE integer USING least(count, 2147483647),
        ALTER COLUMN sum TYPE double precision
            USING greatest(least(sum, 1.7976931348623157e308), -1.7976931348623157e308)
"""


class Migration(migrations.Migration):
    dependencies = [
        ("shards", "0006_mark_existing_readings"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunSQL(FORWARD, reverse_sql=BACKWARD)],
            state_operations=[
                migrations.AlterField(
                    model_name="readingrollup",
                    name="count",
                    field=models.PositiveBigIntegerField(),
                ),
                migrations.AlterField(
                    model_name="readingrollup",
                    name="sum",
                    field=shards.models.NumericField(),
                ),
            ],
        )
    ]
