"""Attack recipes: TextAttack's published recipes, rebuilt with offline assets, plus profiles.

Each recipe is a :class:`Recipe` whose ``build(ctx)`` returns a ``textattack.Attack``. The
components follow TextAttack's recipe definitions; where an asset is missing offline, the
:class:`RecipeContext` supplies a named substitute (see :mod:`asa_plugin.attacks.assets`).
Profile ``textdefender`` then applies Li et al. (2021)'s common constraints to any recipe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asa_plugin.attacks.assets import COUNTER_FITTED, Assets, AssetUse, MissingAsset

from asa_plugin.errors import UserError

TEXTDEFENDER_K = 50
"""TextDefender: candidate substitutes per word; the query budget is K x number of words."""
TEXTDEFENDER_MAX_PERCENT = 0.3
TEXTDEFENDER_SIMILARITY = 0.840845057
"""Angular similarity threshold (TextFooler's, used by TextDefender for every attack)."""
GLOVE_SUBSTITUTE = "GloVe 6B 50d nearest neighbours"


@dataclass(frozen=True)
class Recipe:
    """A registered attack recipe: ``build(ctx) -> textattack.Attack``."""

    name: str
    build: Callable[[RecipeContext], Any]
    description: str
    paper: str = ""
    pairs: bool | str = True
    """True when the recipe attacks sentence pairs; otherwise the one-line reason it cannot."""


@dataclass
class RecipeContext:
    """What a recipe builder may use: the model wrapper, the assets resolver and the profile."""

    model_wrapper: Any
    assets: Assets
    profile: str = "stock"
    notes: list[str] = field(default_factory=list)

    # --- assets as TextAttack components ----------------------------------------------------
    def word_embedding(self):
        from asa_plugin.attacks import substitutes
        from asa_plugin.attacks.embeddings import glove_neighbours

        files = self.assets.embedding_files()
        if files.kind == "counter-fitted":
            self.assets.record(AssetUse("word_embedding", str(files.path)))
            return substitutes.counter_fitted_embedding(files.path)
        if files.kind == "counter-fitted-download":
            from textattack.shared import WordEmbedding

            self.assets.record(AssetUse("word_embedding", "TextAttack paragramcf (download)"))
            return WordEmbedding.counterfitted_GLOVE_embedding()
        vocab = self.assets.cfg.embedding_vocab_size
        words, vectors, nn = glove_neighbours(files.vectors, files.index, vocab, self.assets.cache_dir)
        self.assets.record(AssetUse("word_embedding", f"{GLOVE_SUBSTITUTE} from {files.path}",
                                    substitute_for=COUNTER_FITTED,
                                    note=f"{len(words)} most frequent words; neighbour matrix cached in "
                                         f"{self.assets.cache_dir / 'embeddings'}"))
        return substitutes.glove_word_embedding(words, vectors, nn)

    def embedding_swap_constraints(self) -> list:
        """Antonym filter for embedding swaps (GloVe neighbours include antonyms)."""
        from asa_plugin.attacks.substitutes import AntonymSwapFilter

        pairs = self.assets.antonym_pairs()
        if pairs is None:
            substitute = self.assets.used.get("word_embedding")
            if substitute is not None and substitute.substitute_for:
                self.assets.record(AssetUse("antonyms", "none", note="antonym swaps not filtered: set "
                                                                     "attack.antonym_files (PPDB antonyms)"))
            return []
        return [AntonymSwapFilter(pairs)]

    def sentence_encoder(self, **kwargs):
        from asa_plugin.attacks.substitutes import TransformerSentenceEncoder

        path, use = self.assets.sentence_encoder_path()
        self.assets.record(use)
        encoder = TransformerSentenceEncoder(path, **kwargs)
        device = getattr(self.model_wrapper, "device", None)
        return encoder.to(device) if device is not None else encoder

    def part_of_speech(self, allow_verb_noun_swap: bool = True) -> list:
        """TextAttack's tagger-based check when NLTK's tagger is local, else WordNet POS sets, else none."""
        from asa_plugin.attacks.textattack_env import nltk_has

        tagger = nltk_has("averaged_perceptron_tagger_eng") or nltk_has("averaged_perceptron_tagger")
        if tagger and nltk_has("universal_tagset"):
            from textattack.constraints.grammaticality import PartOfSpeech

            self.assets.record(AssetUse("pos_tagger", tagger))
            return [PartOfSpeech(allow_verb_noun_swap=allow_verb_noun_swap)]
        if self.assets.has_wordnet():
            from asa_plugin.attacks.substitutes import WordNetPOSMatch

            self.assets.record(AssetUse("pos_tagger", f"WordNet POS sets ({self.assets.wordnet()})",
                                        substitute_for="NLTK averaged perceptron tagger (context-free check)"))
            return [WordNetPOSMatch(allow_verb_noun_swap)]
        self.assets.record(AssetUse("pos_tagger", "none", substitute_for="NLTK averaged perceptron tagger",
                                    note="POS constraint dropped: no tagger and no WordNet"))
        return []

    def masked_lm(self):
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        path = self.assets.masked_lm_path()
        try:
            return AutoModelForMaskedLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise MissingAsset(f"recipe '{self.assets.recipe}': cannot load masked LM {path}: "
                               f"{str(exc).splitlines()[0]}") from None


# --- recipe builders (components as in TextAttack's recipes) --------------------------------
def _base_constraints(stopwords=None) -> list:
    from textattack.constraints.pre_transformation import RepeatModification, StopwordModification

    return [RepeatModification(), StopwordModification(stopwords=stopwords)]


def _attack(ctx: RecipeContext, constraints, transformation, search_method, cls=None, goal_kwargs=None):
    import textattack
    from textattack.goal_functions import UntargetedClassification

    goal = UntargetedClassification(ctx.model_wrapper, **(goal_kwargs or {}))
    return (cls or textattack.Attack)(goal, constraints, transformation, search_method)


def build_deepwordbug(ctx: RecipeContext):
    from textattack.constraints.overlap import LevenshteinEditDistance
    from textattack.search_methods import GreedyWordSwapWIR
    from textattack.transformations import (
        CompositeTransformation,
        WordSwapNeighboringCharacterSwap,
        WordSwapRandomCharacterDeletion,
        WordSwapRandomCharacterInsertion,
        WordSwapRandomCharacterSubstitution,
    )

    transformation = CompositeTransformation([
        WordSwapNeighboringCharacterSwap(), WordSwapRandomCharacterSubstitution(),
        WordSwapRandomCharacterDeletion(), WordSwapRandomCharacterInsertion()])
    constraints = _base_constraints() + [LevenshteinEditDistance(30)]
    return _attack(ctx, constraints, transformation, GreedyWordSwapWIR())


def build_pwws(ctx: RecipeContext):
    from textattack.search_methods import GreedyWordSwapWIR
    from textattack.transformations import WordSwapWordNet

    ctx.assets.wordnet()
    return _attack(ctx, _base_constraints(), WordSwapWordNet(), GreedyWordSwapWIR("weighted-saliency"))


def build_textfooler(ctx: RecipeContext):
    from asa_plugin.attacks.textfooler_stopwords import textfooler_stopwords
    from textattack.constraints.pre_transformation import InputColumnModification
    from textattack.constraints.semantics import WordEmbeddingDistance
    from textattack.search_methods import GreedyWordSwapWIR
    from textattack.transformations import WordSwapEmbedding

    embedding = ctx.word_embedding()
    constraints = _base_constraints(textfooler_stopwords()) + [
        InputColumnModification(["premise", "hypothesis"], {"premise"}),
        WordEmbeddingDistance(embedding=embedding, min_cos_sim=0.5),
        *ctx.embedding_swap_constraints(),
        *ctx.part_of_speech(allow_verb_noun_swap=True),
        ctx.sentence_encoder(threshold=0.840845057, metric="angular", compare_against_original=False,
                             window_size=15, skip_text_shorter_than_window=True),
    ]
    return _attack(ctx, constraints, WordSwapEmbedding(max_candidates=50, embedding=embedding),
                   GreedyWordSwapWIR(wir_method="delete"))


def build_textbugger(ctx: RecipeContext):
    from asa_plugin.attacks.substitutes import WordSwapVisualChars
    from textattack.search_methods import GreedyWordSwapWIR
    from textattack.transformations import (
        CompositeTransformation,
        WordSwapEmbedding,
        WordSwapNeighboringCharacterSwap,
        WordSwapRandomCharacterDeletion,
        WordSwapRandomCharacterInsertion,
    )

    ctx.assets.record(AssetUse("homoglyphs", "asa_plugin.attacks.substitutes.VISUAL_CHARS",
                               substitute_for="TextAttack's intentional_homoglyphs.txt (missing from its wheel)",
                               note="TextBugger's Sub-C look-alike characters"))
    embedding = ctx.word_embedding()
    transformation = CompositeTransformation([
        WordSwapRandomCharacterInsertion(random_one=True, letters_to_insert=" ", skip_first_char=True,
                                         skip_last_char=True),
        WordSwapRandomCharacterDeletion(random_one=True, skip_first_char=True, skip_last_char=True),
        WordSwapNeighboringCharacterSwap(random_one=True, skip_first_char=True, skip_last_char=True),
        WordSwapVisualChars(),
        WordSwapEmbedding(max_candidates=5, embedding=embedding),
    ])
    constraints = _base_constraints() + ctx.embedding_swap_constraints() + [ctx.sentence_encoder(threshold=0.8)]
    return _attack(ctx, constraints, transformation, GreedyWordSwapWIR(wir_method="delete"))


def _masked_lm_swap(ctx: RecipeContext, method: str, max_candidates: int, **kwargs):
    from textattack.transformations import WordSwapMaskedLM

    model, tokenizer = ctx.masked_lm()
    max_length = min(512, int(tokenizer.model_max_length), model.config.max_position_embeddings)
    return WordSwapMaskedLM(method=method, masked_language_model=model, tokenizer=tokenizer,
                            max_candidates=max_candidates, max_length=max_length, **kwargs)


def build_bae(ctx: RecipeContext):
    from textattack.attack_recipes import BAEGarg2019
    from textattack.search_methods import GreedyWordSwapWIR

    transformation = _masked_lm_swap(ctx, "bae", 50, min_confidence=0.0)
    constraints = _base_constraints() + ctx.part_of_speech(True) + [
        ctx.sentence_encoder(threshold=0.936338023, metric="cosine", compare_against_original=True,
                             window_size=15, skip_text_shorter_than_window=True)]
    return _attack(ctx, constraints, transformation, GreedyWordSwapWIR(wir_method="delete"), cls=BAEGarg2019)


def build_bert_attack(ctx: RecipeContext):
    from textattack.constraints.overlap import MaxWordsPerturbed
    from textattack.search_methods import GreedyWordSwapWIR

    transformation = _masked_lm_swap(ctx, "bert-attack", 8)
    constraints = _base_constraints() + [
        MaxWordsPerturbed(max_percent=0.4),
        ctx.sentence_encoder(threshold=0.2, metric="cosine", compare_against_original=True, window_size=None)]
    return _attack(ctx, constraints, transformation, GreedyWordSwapWIR(wir_method="unk"))


def build_pso(ctx: RecipeContext):
    from textattack.constraints.pre_transformation import InputColumnModification
    from textattack.search_methods import ParticleSwarmOptimization
    from textattack.transformations import WordSwapEmbedding

    embedding = ctx.word_embedding()
    ctx.assets.record(AssetUse("sememes", "word_embedding neighbours (K=8)",
                               substitute_for="HowNet sememe synonyms (OpenHowNet download)"))
    constraints = _base_constraints() + [InputColumnModification(["premise", "hypothesis"], {"premise"})]
    constraints += ctx.embedding_swap_constraints()
    return _attack(ctx, constraints, WordSwapEmbedding(max_candidates=8, embedding=embedding),
                   ParticleSwarmOptimization(pop_size=60, max_iters=20))


def build_a2t(ctx: RecipeContext):
    from textattack.constraints.pre_transformation import InputColumnModification, MaxModificationRate
    from textattack.constraints.semantics import WordEmbeddingDistance
    from textattack.search_methods import GreedyWordSwapWIR
    from textattack.transformations import WordSwapEmbedding

    embedding = ctx.word_embedding()
    constraints = _base_constraints() + [
        InputColumnModification(["premise", "hypothesis"], {"premise"}),
        *ctx.part_of_speech(allow_verb_noun_swap=False),
        MaxModificationRate(max_rate=0.1, min_threshold=4),
        ctx.sentence_encoder(threshold=0.9, metric="cosine"),
        WordEmbeddingDistance(embedding=embedding, min_cos_sim=0.8),
        *ctx.embedding_swap_constraints(),
    ]
    used = ctx.assets.used["sentence_encoder"]
    ctx.assets.record(AssetUse("sentence_encoder", used.source,
                               substitute_for="SBERT stsb-distilbert-base (A2T's encoder)"))
    max_len = getattr(ctx.model_wrapper, "max_length", None) or 512
    return _attack(ctx, constraints, WordSwapEmbedding(max_candidates=20, embedding=embedding),
                   GreedyWordSwapWIR(wir_method="gradient", truncate_words_to=max_len),
                   goal_kwargs={"model_batch_size": 32})


BUILTIN = [
    Recipe("deepwordbug", build_deepwordbug, "character edits, greedy by unk-replacement importance",
           "Gao et al. 2018"),
    Recipe("pwws", build_pwws, "WordNet synonyms, probability-weighted word saliency", "Ren et al. 2019"),
    Recipe("textfooler", build_textfooler, "embedding neighbours + POS + sentence similarity", "Jin et al. 2019"),
    Recipe("textbugger", build_textbugger, "character bugs and embedding neighbours", "Li et al. 2019"),
    Recipe("bae", build_bae, "BERT masked-LM replacements (BAE-R)", "Garg & Ramakrishnan 2019"),
    Recipe("bert-attack", build_bert_attack, "BERT masked-LM replacements", "Li et al. 2020"),
    Recipe("pso", build_pso, "particle swarm over synonym substitutions", "Zang et al. 2020"),
    Recipe("a2t", build_a2t, "gradient-ordered cheap word swaps", "Yoo & Qi 2021"),
]

STOCK_TEXTATTACK = {
    "alzantot": "GeneticAlgorithmAlzantot2018", "faster-alzantot": "FasterGeneticAlgorithmJia2019",
    "hotflip": "HotFlipEbrahimi2017", "input-reduction": "InputReductionFeng2018", "kuleshov": "Kuleshov2017",
    "morpheus": "MorpheusTan2020", "iga": "IGAWang2019", "pruthi": "Pruthi2019", "checklist": "CheckList2020",
    "clare": "CLARE2020", "bad-characters": "BadCharacters2021",
}
"""Other stock TextAttack recipes, built by TextAttack itself (its own assets, downloaded if needed)."""


def stock_recipe(name: str, class_name: str) -> Recipe:
    def build(ctx: RecipeContext):
        import textattack.attack_recipes as recipes

        try:
            return getattr(recipes, class_name).build(ctx.model_wrapper)
        except Exception as exc:  # noqa: BLE001 - TextAttack raises anything when a download fails
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise MissingAsset(f"recipe '{name}' (TextAttack's {class_name}) could not be built, most likely "
                               f"an asset it downloads is unavailable: {type(exc).__name__}: {first}") from None

    return Recipe(name, build, f"TextAttack's stock {class_name}", "")


# --- profiles -------------------------------------------------------------------------------
def apply_profile(attack, ctx: RecipeContext):
    """Return ``attack`` changed to the profile's constraints (``stock`` leaves it as built)."""
    if ctx.profile == "stock":
        return attack
    from textattack.constraints.overlap import MaxWordsPerturbed
    from textattack.constraints.pre_transformation import MaxModificationRate
    from textattack.constraints.semantics.sentence_encoders import SentenceEncoder

    for transformation in _leaf_transformations(attack.transformation):
        if hasattr(transformation, "max_candidates"):
            transformation.max_candidates = TEXTDEFENDER_K
    kept = [c for c in attack.pre_transformation_constraints + attack.constraints
            if not isinstance(c, (MaxWordsPerturbed, MaxModificationRate, SentenceEncoder))]
    kept += [MaxWordsPerturbed(max_percent=TEXTDEFENDER_MAX_PERCENT),
             ctx.sentence_encoder(threshold=TEXTDEFENDER_SIMILARITY, metric="angular",
                                  compare_against_original=False, window_size=15,
                                  skip_text_shorter_than_window=True)]
    return type(attack)(attack.goal_function, kept, attack.transformation, attack.search_method)


def profile_query_budget(profile: str, num_words: int, configured: int | None) -> float:
    """Queries allowed for one example: the configured budget, else the profile's (inf for stock)."""
    if configured is not None:
        return configured
    if profile == "textdefender":
        return TEXTDEFENDER_K * max(num_words, 1)
    return float("inf")


def _leaf_transformations(transformation) -> list:
    inner = getattr(transformation, "transformations", None)
    if inner:
        return [leaf for t in inner for leaf in _leaf_transformations(t)]
    return [transformation]


PAIR_COLUMNS = ["text", "text_pair"]
"""TextAttack column labels of a sentence pair. They differ from the ``premise``/``hypothesis``
that some TextAttack recipes freeze on their own, so ``attack.modify_columns`` alone decides."""


def pair_input(text: str, text_pair: str):
    """TextAttack's multi-column input for a sentence pair."""
    from collections import OrderedDict

    return OrderedDict(zip(PAIR_COLUMNS, (text, text_pair)))


def freeze_columns(attack, modify_columns: list[str]):
    """``attack`` with the pair columns outside ``modify_columns`` frozen (never modified)."""
    from textattack.constraints.pre_transformation import InputColumnModification

    frozen = {c for c in PAIR_COLUMNS if c not in modify_columns}
    constraints = attack.pre_transformation_constraints + attack.constraints
    if frozen:
        constraints.append(InputColumnModification(list(PAIR_COLUMNS), frozen))
    return type(attack)(attack.goal_function, constraints, attack.transformation, attack.search_method)


def build_attack(recipe: Recipe, model_wrapper, cfg, cache_dir: Path, pairs: bool = False) -> tuple[Any, Assets]:
    """Build ``recipe`` for ``model_wrapper`` under ``cfg``'s profile; NLTK downloads guarded.

    ``pairs``: the inputs are sentence pairs; only ``cfg.modify_columns`` may be modified.
    """
    from asa_plugin.attacks.textattack_env import nltk_downloads

    if pairs and recipe.pairs is not True:
        raise UserError(f"recipe '{recipe.name}' cannot attack sentence pairs: {recipe.pairs}")
    assets = Assets(cfg, cache_dir, recipe.name)
    ctx = RecipeContext(model_wrapper, assets, cfg.profile)
    with nltk_downloads(Path(cache_dir), assets.may_download):
        attack = apply_profile(recipe.build(ctx), ctx)
    if pairs:
        attack = freeze_columns(attack, cfg.modify_columns)
    return attack, assets
