"""Mark every minute that already holds readings, so the first analysis run rolls them up.

Readings stored before rollups existed have no marks; without this, charts would read
empty rollups for them. One INSERT ... SELECT per shard; nothing to undo on the way back
(0005's reversal drops the table).
"""

from django.db import migrations

MARK_EXISTING = """
    INSERT INTO shards_rolluppending (device_id, metric, minute, marked_at)
    SELECT DISTINCT device_id, metric,
           date_bin('1 minute', ts, timestamptz '2000-01-01 00:00:00+00'), now()
    FROM shards_reading
    ON CONFLICT DO NOTHING
"""


class Migration(migrations.Migration):
    dependencies = [
        ("shards", "0005_rollups"),
    ]

    operations = [migrations.RunSQL(MARK_EXISTING, reverse_sql=migrations.RunSQL.noop)]
