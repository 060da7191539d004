"""Fixtures of the chart tests: helm, the gateway binary, and rendering charts into objects."""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHARTS = ROOT / "deploy" / "helm"


def _helm() -> str:
    for cand in (os.environ.get("HELM"), str(ROOT / "build" / "tools" / "bin" / "helm"), shutil.which("helm")):
        if cand and os.access(cand, os.X_OK):
            return cand
    pytest.fail("helm not found: `make test-deploy` installs it (go install helm.sh/helm/v3/cmd/helm@v3.16.3), "
                "or set HELM")


@pytest.fixture(scope="session")
def helm() -> str:
    return _helm()


@pytest.fixture(scope="session")
def busgate_bin() -> str:
    b = os.environ.get("BUSGATE_BIN", str(ROOT / "build" / "bin" / "busgate"))
    assert os.access(b, os.X_OK), f"gateway binary not found at {b} (make build, or set BUSGATE_BIN)"
    return b


class Rendered(list):
    """The objects `helm template` rendered, with lookups by kind and name."""

    def kind(self, kind: str) -> list[dict]:
        return [o for o in self if o.get("kind") == kind]

    def one(self, kind: str, name: str | None = None) -> dict:
        found = [o for o in self.kind(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"{len(found)} {kind} named {name!r} among {[o['metadata']['name'] for o in self.kind(kind)]}"
        return found[0]


def template(helm: str, chart: str, *args: str, release: str = "rel", namespace: str = "busgate") -> Rendered:
    r = subprocess.run([helm, "template", release, str(CHARTS / chart), "--namespace", namespace, *args],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"helm template {chart} {' '.join(args)} failed:\n{r.stderr}"
    return Rendered(o for o in yaml.safe_load_all(r.stdout) if o)


def template_error(helm: str, chart: str, *args: str) -> str:
    r = subprocess.run([helm, "template", "rel", str(CHARTS / chart), *args], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0, f"helm template {chart} {' '.join(args)} rendered, but should have refused"
    return r.stderr
