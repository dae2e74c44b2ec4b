"""``advrobust asa-maps RUN_DIR --text "..." [--layers 0,1] [--out file.png]``."""

from __future__ import annotations

from asa_plugin.errors import UserError


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
    from pathlib import Path

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run directory not found; give the run directory of an `advrobust train` "
                        f"run with defence asa")
    from asa_plugin.defences.asa.maps import compute_maps, render

    tokens, maps = compute_maps(run_dir, args.text, parse_layers(args.layers))
    out = render(tokens, maps, args.out or run_dir / "asa_maps.png", title=args.text)
    print(out)
    return 0
