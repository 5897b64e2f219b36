"""A kit points at the template it was rendered from: the pin, the schema URL, the README link.

copier records the source as given (`_src_path`) and the release or commit (`_commit`,
`vcs_ref_hash`); the macros turn them into a pip direct reference and public URLs. The macros
run here in copier's own Jinja setup (sandbox + the ansible filters copier loads), with every
source form copier accepts; tests/test_install.py installs a real kit's pin.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from jinja2 import FileSystemLoader
from jinja2.sandbox import SandboxedEnvironment

from tests.conftest import PRESETS, REPO

HASH = "0123456789abcdef0123456789abcdef01234567"
GH_RAW = "https://raw.githubusercontent.com/acme/shipyard"


def source(src: str, commit: str | None, vcs_hash: str | None) -> tuple[str, str, str]:
    """(requirement, shipyard.yaml schema URL, web page) rendered by the template's macros."""
    env = SandboxedEnvironment(
        loader=FileSystemLoader(REPO),
        extensions=["jinja2_ansible_filters.AnsibleCoreFiltersExtension"],
    )
    template = env.from_string(
        "{%- import 'template/includes/macros.jinja' as m with context -%}"
        "{{ m.source_requirement() }}|{{ m.source_schema('shipyard') }}|{{ m.source_web() }}"
    )
    answers = {"_src_path": src, **({"_commit": commit} if commit else {})}
    out = template.render(_copier_answers=answers, _copier_conf={"vcs_ref_hash": vcs_hash})
    requirement, schema, web = out.split("|")
    return requirement, schema, web


@pytest.mark.parametrize(
    ("src", "commit", "expected"),
    [
        (
            "gh:acme/shipyard",
            "v1.2.0",
            (
                "git+https://github.com/acme/shipyard@v1.2.0",
                f"{GH_RAW}/v1.2.0/schemas/shipyard.schema.json",
                "https://github.com/acme/shipyard",
            ),
        ),
        (
            # Between tags copier records `git describe`; the pin takes the exact commit.
            "https://github.com/acme/shipyard.git",
            "v1.2.0-3-g0123456",
            (
                f"git+https://github.com/acme/shipyard.git@{HASH}",
                f"{GH_RAW}/{HASH}/schemas/shipyard.schema.json",
                "https://github.com/acme/shipyard",
            ),
        ),
        (
            "git@github.com:acme/shipyard.git",
            "1.2.0",
            (
                "git+ssh://git@github.com/acme/shipyard.git@1.2.0",
                f"{GH_RAW}/1.2.0/schemas/shipyard.schema.json",
                "https://github.com/acme/shipyard",
            ),
        ),
        (
            "gl:platform/templates/shipyard",
            "v2.0.0",
            (
                "git+https://gitlab.com/platform/templates/shipyard@v2.0.0",
                "https://gitlab.com/platform/templates/shipyard/-/raw/v2.0.0/schemas/"
                "shipyard.schema.json",
                "https://gitlab.com/platform/templates/shipyard",
            ),
        ),
        (
            # A token in the URL (CI clones) never reaches a committed file.
            "https://x-access-token:ghp_SECRET@github.com/acme/shipyard.git",
            "v1.2.0",
            (
                "git+https://github.com/acme/shipyard.git@v1.2.0",
                f"{GH_RAW}/v1.2.0/schemas/shipyard.schema.json",
                "https://github.com/acme/shipyard",
            ),
        ),
        (
            # A self-hosted forge: installable, but no known public file URL.
            "https://git.example.com/platform/shipyard.git",
            "v3.1.0",
            ("git+https://git.example.com/platform/shipyard.git@v3.1.0", "", ""),
        ),
        (
            "git+ssh://git@git.example.com/platform/shipyard",
            "v3.1.0",
            ("git+ssh://git@git.example.com/platform/shipyard@v3.1.0", "", ""),
        ),
        (
            # A short hash of digits only is still a commit, not a release "0123456".
            "/srv/templates/shipyard",
            "0123456",
            (f"git+file://localhost/srv/templates/shipyard@{HASH}", "", ""),
        ),
    ],
)
def test_source_forms(src: str, commit: str, expected: tuple[str, str, str]) -> None:
    assert source(src, commit, HASH) == expected


def test_relative_local_source_is_resolved_where_copier_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    requirement, schema, web = source("../templates/shipyard", "0123456", HASH)
    expected = Path(os.path.realpath(tmp_path.parent / "templates" / "shipyard"))
    assert requirement == f"git+file://localhost{expected}@{HASH}"
    assert (schema, web) == ("", "")


def test_plain_folder_source_is_a_file_requirement() -> None:
    # No git: copier records no commit, and pip installs the folder as it is.
    assert source("/srv/shipyard", None, None) == ("file:///srv/shipyard", "", "")


@pytest.mark.parametrize("preset", PRESETS)
def test_no_rendered_file_names_a_placeholder_organisation(
    rendered: Callable[[str], Path], preset: str
) -> None:
    root = rendered(preset)
    named = [
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and b"ourorg" in path.read_bytes()
    ]
    assert named == []


def test_answers_file_records_the_source_without_credentials() -> None:
    env = SandboxedEnvironment(
        loader=FileSystemLoader(REPO),
        extensions=["jinja2_ansible_filters.AnsibleCoreFiltersExtension"],
    )
    template = env.get_template("template/{{_copier_conf.answers_file}}.jinja")
    answers = {
        "_commit": "v1.2.0",
        "_src_path": "https://ci:ghp_SECRET@git.example.com/acme/shipyard.git",
        "project_name": "Shop",
    }
    text = template.render(_copier_answers=answers, _copier_conf={"vcs_ref_hash": HASH})
    assert "ghp_SECRET" not in text
    assert yaml.safe_load(text) == {
        **answers,
        "_src_path": "https://git.example.com/acme/shipyard.git",
    }
    assert text.startswith(
        "# Changes here will be overwritten by Copier; NEVER EDIT MANUALLY\n_commit"
    )
