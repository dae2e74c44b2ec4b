"""``advrobust asa-maps RUN_DIR --text "..." [--layers 0,1] [--out file.png]``."""

from __future__ import annotations

from pathlib import Path

from asa_plugin.errors import UserError, writing


def add_parser(sub) -> None:
    p = sub.add_parser("asa-maps", help="draw clean attention beside the ASA adversary's mask (PNG)")
    p.add_argument("run_dir", help="run directory of a training run with defence asa")
    p.add_argument("--text", required=True, help="the sentence to draw")
    p.add_argument("--layers", default=None, help="comma-separated 0-based layers (default: all adversarial)")
    p.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/asa_maps.png)")
    p.set_defaults(run=run)


def parse_layers(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        layers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--layers must be comma-separated layer numbers such as 0,1; got {text!r}") from None
    if not layers:
        raise UserError("--layers is empty; give layer numbers such as 0,1")
    return layers


def run(args) -> int:
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run directory not found; give the run directory of an `advrobust train` "
                        f"run with defence asa")
    out = output_path(args.out, run_dir)
    from asa_plugin.defences.asa.maps import compute_maps, render

    tokens, maps = compute_maps(run_dir, args.text, parse_layers(args.layers))
    with writing(out):
        out = render(tokens, maps, out, title=args.text)
    print(out)
    return 0


IMAGE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")
"""What matplotlib writes by the name's suffix; a name without one gets ``.png`` (as matplotlib adds it)."""


def output_path(out: str | None, run_dir) -> Path:
    """The file asa-maps writes (``--out`` with ``.png`` added when it has no image suffix, as matplotlib
    would add it), checked writable before the model loads."""
    from asa_plugin.checks import check_writable

    path = Path(out) if out else Path(run_dir) / "asa_maps.png"
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        path = path.with_name(path.name + ".png")
    if path.is_dir():
        raise UserError(f"asa-maps --out {path} is a directory; give a file name such as {path / 'maps.png'}")
    check_writable(path.parent, "asa-maps --out", "choose another with --out FILE.png")
    return path
