"""Invoke tasks a generated repo imports: `from shipyard.tasks import ns`.

One module per task family; each ends with its own `Collection`, which is added here. Tasks
read shipyard.yaml through `support.load_config`, so a broken file stops them with a clear
message; the invoke configuration they read is declared here (`support.CONFIG`).
"""

from __future__ import annotations

from invoke.collection import Collection

from shipyard.tasks import backup, build, deploy, info, monitoring, template
from shipyard.tasks.support import CONFIG

ns = Collection()
ns.configure(CONFIG)
ns.add_task(info.config_check, name="config")
# Images and releases are top-level tasks: `invoke build`, `invoke deploy --env prod`.
for _task in (*build.ns.tasks.values(), *deploy.ns.tasks.values()):
    ns.add_task(_task)
# `invoke backup --env E`, `backup.list`, `backup.verify`, `backup.prune`; `invoke restore`.
ns.add_collection(backup.ns)
ns.add_task(backup.restore)
# `invoke monitoring.up --env E`: a Compose host's monitoring stack.
ns.add_collection(monitoring.ns)
# `invoke template.update` / `template.check`: follow the template's releases.
ns.add_collection(template.ns)
