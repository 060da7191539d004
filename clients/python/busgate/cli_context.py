"""busgate-cli contexts: named gateway URL + token pairs, like ``nats context``.

The file is JSON, ``$BUSGATE_CONTEXTS_FILE``, else ``$XDG_CONFIG_HOME/busgate/contexts.json``, else
``~/.config/busgate/contexts.json``, written with mode 0600 (its folder 0700)::

    {"selected": "prod",
     "contexts": {"prod": {"url": "busgate+tls://gw.example:7422", "token_env": "PROD_TOKEN"},
                  "dev":  {"url": "busgate://127.0.0.1:7422", "token": "dev-token"}}}

A context stores its token itself (``--token``) or the name of the environment variable that holds
it at use time (``--token-env``). The context a command uses is ``--context NAME``, else
``$BUSGATE_CONTEXT``, else the selected one; naming a context that does not exist is a usage error.
Each setting is taken from the first of: ``--url``/``--token``, ``$BUSGATE_URL``/``$BUSGATE_TOKEN``,
the context, the default URL (no token).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import sys
from typing import Any

from . import errors as E
from ._transport import parse_url
from .cli_exit import UsageError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def contexts_path() -> pathlib.Path:
    explicit = os.environ.get("BUSGATE_CONTEXTS_FILE")
    if explicit:
        return pathlib.Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return pathlib.Path(base) / "busgate" / "contexts.json"


def load(path: pathlib.Path | None = None) -> dict[str, Any]:
    path = path or contexts_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {"selected": None, "contexts": {}}
    except OSError as e:
        raise UsageError(f"cannot read the contexts file {path}: {e.strerror or e}") from None
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("contexts", {}), dict):
            raise ValueError("not an object with a 'contexts' object")
    except ValueError as e:
        raise UsageError(f"the contexts file {path} is not valid: {e}") from None
    data.setdefault("contexts", {})
    data.setdefault("selected", None)
    return data


def save(data: dict[str, Any], path: pathlib.Path | None = None) -> None:
    """Write atomically (a temporary file in the same folder, then rename), mode 0600."""
    path = path or contexts_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _get(data: dict[str, Any], name: str, path: pathlib.Path) -> dict[str, Any]:
    ctx = data["contexts"].get(name)
    if not isinstance(ctx, dict):
        raise UsageError(f"unknown context {name!r} (contexts file {path}; see 'busgate-cli context ls')")
    return ctx


def _token_of(name: str, ctx: dict[str, Any]) -> str | None:
    var = ctx.get("token_env")
    if var:
        value = os.environ.get(var)
        if not value:
            raise UsageError(f"context {name!r} takes its token from ${var}, which is not set")
        return value
    return ctx.get("token") or None


def active_name(args: argparse.Namespace, data: dict[str, Any] | None = None) -> tuple[str | None, bool]:
    """(name, named): the context in use, and whether it was named (--context, $BUSGATE_CONTEXT)."""
    name = getattr(args, "context", None) or os.environ.get("BUSGATE_CONTEXT") or None
    if name:
        return name, True
    data = data if data is not None else load()
    return data.get("selected") or None, False


def resolve(args: argparse.Namespace, default_url: str) -> tuple[str, str | None]:
    """The URL and token a connecting command uses (precedence in the module docstring)."""
    url = args.url or os.environ.get("BUSGATE_URL") or None
    token = args.token or os.environ.get("BUSGATE_TOKEN") or None
    path = contexts_path()
    named = getattr(args, "context", None) or os.environ.get("BUSGATE_CONTEXT") or None
    if named is None and url and token:
        return url, token  # nothing is taken from a context
    data = load(path)
    name = named or data.get("selected") or None
    if name is not None:
        ctx = _get(data, name, path)
        url = url or ctx.get("url") or None
        if token is None:
            token = _token_of(name, ctx)
    return url or default_url, token


# ------------------------------------------------------------------ the `context` command

def mask(token: str | None) -> str:
    if not token:
        return "(none)"
    return token[:2] + "*" * 6 if len(token) >= 8 else "*" * 8


def _describe(ctx: dict[str, Any]) -> str:
    if ctx.get("token_env"):
        state = "set" if os.environ.get(ctx["token_env"]) else "not set"
        return f"from ${ctx['token_env']} ({state})"
    return mask(ctx.get("token"))


def add_parser(sp: Any) -> None:
    ctx = sp.add_parser("context", help="manage named gateway URL + token pairs (contexts)",
                        description="Named gateway URL + token pairs, stored in $BUSGATE_CONTEXTS_FILE, "
                                    "else $XDG_CONFIG_HOME/busgate/contexts.json or ~/.config/busgate/contexts.json "
                                    "(mode 0600).")
    csp = ctx.add_subparsers(dest="context_cmd", required=True, metavar="ACTION")
    a = csp.add_parser("add", help="add or replace a context")
    a.add_argument("context_name", metavar="NAME")
    a.add_argument("--url", dest="context_url", required=True, help="gateway URL")
    tok = a.add_mutually_exclusive_group()
    tok.add_argument("--token", dest="context_token", default=None, help="the token, stored in the file")
    tok.add_argument("--token-env", dest="context_token_env", default=None, metavar="VAR",
                     help="read the token from $VAR when the context is used (nothing secret in the file)")
    a.add_argument("--select", action="store_true", help="also make it the selected context")
    csp.add_parser("ls", help="list the contexts (* marks the selected one)")
    s = csp.add_parser("select", help="select the context used by default (no NAME: print the selected one)")
    s.add_argument("context_name", metavar="NAME", nargs="?")
    r = csp.add_parser("rm", help="remove a context")
    r.add_argument("context_name", metavar="NAME")
    sh = csp.add_parser("show", help="show a context (default: the one in use); the token is masked")
    sh.add_argument("context_name", metavar="NAME", nargs="?")


def run(args: argparse.Namespace) -> int:
    path = contexts_path()
    data = load(path)
    out = sys.stdout
    cmd = args.context_cmd
    name = getattr(args, "context_name", None)
    if cmd == "add":
        if not NAME_RE.match(name):
            raise UsageError(f"invalid context name {name!r}: letters, digits, '_', '.', '-', at most 64")
        try:
            parse_url(args.context_url)
        except E.InvalidURL as e:
            raise UsageError(f"invalid --url {args.context_url!r}: {e}") from None
        if args.context_token_env is not None and not ENV_RE.match(args.context_token_env):
            raise UsageError(f"invalid --token-env {args.context_token_env!r}: an environment variable name")
        ctx: dict[str, Any] = {"url": args.context_url}
        if args.context_token:
            ctx["token"] = args.context_token
        elif args.context_token_env:
            ctx["token_env"] = args.context_token_env
        existed = name in data["contexts"]
        data["contexts"][name] = ctx
        if args.select:
            data["selected"] = name
        save(data, path)
        print(f"{'Replaced' if existed else 'Added'} context {name!r} ({args.context_url})"
              + (", selected" if args.select else "") + f" in {path}", file=sys.stderr)
    elif cmd == "ls":
        width = max([len(n) for n in data["contexts"]] + [4])
        for n in sorted(data["contexts"]):
            c = data["contexts"][n]
            mark = "*" if n == data.get("selected") else " "
            print(f"{mark} {n:<{width}}  {c.get('url', '')}  token {_describe(c)}", file=out)
    elif cmd == "select":
        if name is None:
            if data.get("selected"):
                print(data["selected"], file=out)
            return 0
        _get(data, name, path)
        data["selected"] = name
        save(data, path)
        print(f"Selected context {name!r}", file=sys.stderr)
    elif cmd == "rm":
        _get(data, name, path)
        del data["contexts"][name]
        if data.get("selected") == name:
            data["selected"] = None
        save(data, path)
        print(f"Removed context {name!r}", file=sys.stderr)
    elif cmd == "show":
        if name is None:
            name, _ = active_name(args, data)
            if name is None:
                raise UsageError("no context is selected (busgate-cli context select NAME)")
        c = _get(data, name, path)
        print(f"name:     {name}" + ("  (selected)" if name == data.get("selected") else ""), file=out)
        print(f"url:      {c.get('url', '')}", file=out)
        print(f"token:    {_describe(c)}", file=out)
        print(f"file:     {path}", file=out)
    return 0
