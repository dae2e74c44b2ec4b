"""Registers the built-in defences through the ``advrobust`` hooks, like any third-party plugin."""

from asa_plugin.hookspecs import hookimpl


@hookimpl
def advrobust_register_defences(register):
    from asa_plugin.defences.a2t import A2TDefence
    from asa_plugin.defences.asa import ASADefence
    from asa_plugin.defences.creat import CreATDefence
    from asa_plugin.defences.fgm import FGMDefence
    from asa_plugin.defences.freelb import FreeLBDefence, FreeLBPlusPlusDefence
    from asa_plugin.defences.infobert import InfoBERTDefence
    from asa_plugin.defences.pgd import PGDDefence
    from asa_plugin.defences.scal import SCALDefence
    from asa_plugin.defences.tavat import TAVATDefence
    from asa_plugin.defences.uscal import USCALDefence
    from asa_plugin.defences.vanilla import VanillaDefence

    register("vanilla", VanillaDefence)
    register("asa", ASADefence)
    register("fgm", FGMDefence)
    register("pgd", PGDDefence)
    register("freelb", FreeLBDefence)
    register("freelb++", FreeLBPlusPlusDefence)
    register("scal", SCALDefence)
    register("uscal", USCALDefence)
    register("creat", CreATDefence)
    register("infobert", InfoBERTDefence)
    register("tavat", TAVATDefence)
    register("a2t", A2TDefence)
