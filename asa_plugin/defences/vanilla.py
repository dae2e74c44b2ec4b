"""``vanilla``: plain cross-entropy fine-tuning, the baseline every defence is compared with."""

from asa_plugin.defences.base import Defence, NoParams


class VanillaDefence(Defence):
    """No defence: minimize cross-entropy on clean inputs."""

    name = "vanilla"
    Params = NoParams
    role = "standalone"
    supports_masked_lm = True
    step_cost = 1.0  # the unit of every step cost
