"""Invoke tasks a generated repo imports: `from shipyard.tasks import ns`.

One module per task family; each ends with its own `Collection`, which is added here. Tasks
read shipyard.yaml through `load_config`, so a broken file stops them with a clear message.
"""

from __future__ import annotations

from invoke.collection import Collection

from shipyard.tasks import info

ns = Collection()
ns.add_task(info.config_check, name="config")
