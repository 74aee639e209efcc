"""`ftc infer`: requests in, answers out, with the model loaded once for all of them.

The requests come as one JSON object, a file of JSON lines, or lines typed at the prompt; the
answers stream to the terminal or go out as JSON lines (to stdout or `--output`), and
`--dry-run` shows what the model would read instead: each prompt and its exact token ids.
Reading requests, answering, the interactive loop and the dry run belong together: the loop
reads each line as a request and answers or dry-runs it like the others. `ftc/commands.py`
keeps the thin `cmd_infer` the CLI calls.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean", type(None): "null"}


def _requests(arg: str | None) -> list[dict] | None:
    from ftc.errors import FtcError

    if arg is None:
        return None
    text = Path(arg).read_text(encoding="utf-8") if Path(arg).is_file() else arg
    try:
        items = [json.loads(l) for l in text.splitlines() if l.strip()] if Path(arg).is_file() else [json.loads(text)]
    except json.JSONDecodeError as e:
        raise FtcError("FTC770", reason=e.msg) from None
    bad = [i for i in items if not isinstance(i, dict)]
    if bad or not items:
        raise FtcError("FTC771", got=_JSON_KINDS.get(type(bad[0]), "a JSON value") if bad else "no JSON at all")
    return items


def infer(args) -> int:
    """One request (streamed), a file of requests (JSON lines out), or an interactive session;
    the model loads once for all of them."""
    from ftc.errors import FtcError

    if args.json and not args.dry_run:
        raise FtcError("FTC772")
    if args.output and args.dry_run:
        raise FtcError("FTC778")
    reqs = _requests(args.input)
    if args.dry_run and reqs is not None:
        _dry_run(args.run_dir, reqs, as_json=args.json)
        return 0
    from ftc.runtime.run import InferSession

    session = InferSession(args.run_dir)
    as_lines = args.output is not None or (args.input is not None and Path(args.input).is_file())
    sink = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115 - closed below
    try:
        if reqs is not None:
            encoded = session.encode(reqs)  # every request is checked before the weights load
            for n, (req, (_, ids)) in enumerate(zip(reqs, encoded), 1):
                _answer(session, args, req, ids, sink if as_lines else None)
                if as_lines and args.output:
                    print(f"ftc: answered {n}/{len(reqs)} -> {args.output}", file=sys.stderr)
            return 0
        _interactive(session, args, sink if args.output else None)
    finally:
        if sink is not sys.stdout:
            sink.close()
    return 0


def _answer(session, args, req: dict, ids: list[int], sink) -> None:
    """Stream the answer to stdout, or (sink) write it as one JSON line."""
    res = session.answer(ids, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                         stream=sink is None)
    if sink is not None:
        sink.write(json.dumps({"request": req, **res}, ensure_ascii=False) + "\n")
        sink.flush()


def _interactive(session, args, sink) -> None:
    """A line a request until end of input; a bad line is named and the session goes on."""
    from ftc.compiler.request import prompt_fields
    from ftc.errors import FtcError

    fields = prompt_fields(session.lock)
    print(f"fields: {', '.join(fields)}; type {'the ' + fields[0] if len(fields) == 1 else 'a JSON object'} a line, "
          "Ctrl-D to end", file=sys.stderr)
    while True:
        if sys.stdin.isatty():
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            return
        if not line.strip():
            continue
        try:
            req = {fields[0]: line.rstrip("\n")} if len(fields) == 1 else _requests(line)[0]
            ids = session.encode([req])[0][1]
        except FtcError as e:
            print(e.render(), file=sys.stderr)
            continue
        if args.dry_run:
            _dry_run(args.run_dir, [req], as_json=args.json)
            continue
        _answer(session, args, req, ids, sink)
        if sink is None:
            print()  # a blank line between one streamed answer and the next


def _dry_run(run_dir: str, reqs: list[dict], *, as_json: bool) -> None:
    """What the model would be fed, per request and in order: the prompt and its exact ids. No weights load."""
    from ftc.runtime.run import encode_requests

    tok, encoded = encode_requests(Path(run_dir), reqs)
    for n, (prompt, ids) in enumerate(encoded, 1):
        if as_json:
            print(json.dumps({"prompt": prompt, "prompt_ids": ids}, ensure_ascii=False))
            continue
        print(f"── request {n}: {len(ids)} prompt tokens, as the model reads them")
        print(tok.backend_tokenizer.decode(ids, skip_special_tokens=False))
        print(f"ids: {ids}\n")
