"""Tiny pretrained BERT, RoBERTa and GPT-2 checkpoints, and two tiny tasks, made here because there is no hub.

The smoke grid runs every scheme of the paper end to end on a laptop-class CPU in minutes; that needs checkpoints
that (a) have the exact file layout of the public ones, so the warm-starting code paths are the real ones, and
(b) actually know something, so warm-started schemes can beat random initialisation as in the paper. This module:

1. generates a deterministic English-like corpus from a small grammar (a few hundred word types: people and names
   with a gender, verbs, objects, places, times, reasons, and the connectives and pronouns that DiscoFuse-style
   fusion and WikiSplit-style splitting turn on);
2. builds a WordPiece vocabulary (BERT) and trains one byte-level BPE (RoBERTa's and GPT-2's vocab.json share its merges,
   as the real ones do) with the ``tokenizers`` library;
3. pretrains a tiny BERT and RoBERTa (masked LM, 80/10/10 masking) and a tiny GPT-2 (causal LM) for a few hundred
   steps, built from bertgen's own stacks;
4. writes them in the public layouts — BERT: ``BertForMaskedLM`` keys (``bert.`` prefix, token-type embeddings,
   pooler, ``cls.predictions``); RoBERTa: ``roberta.`` prefix, positions ``max + 2``, ``lm_head``; GPT-2:
   ``GPT2LMHeadModel`` keys with Conv1D ``[in, out]`` weights — with their vocabulary files;
5. writes a fusion task and a split task (train / validation / test jsonl with id, source, target) drawn from the
   same grammar.

``experiments.smoke.assets.ensure_smoke_assets(root)`` does all of it once per content hash (of this file and its
settings) and returns the paths, importing this module only then;
``python -m experiments.smoke.pretrain --out DIR`` is the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import random
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tokenizers import BertWordPieceTokenizer, ByteLevelBPETokenizer, normalizers, pre_tokenizers
from bertgen import BertGenerationConfig, BertGenerationEncoder
from bertgen.configuration import GPT2Config
from bertgen.modeling_gpt2 import GPT2LMHeadModel
from safetensors.torch import save_file
from bertgen.tokenization_vocab import read_bpe_vocab, read_wordpiece_vocab

from ..recipes.optim import LRSchedule, build_optimizer
from .assets import MANIFEST, TASK_SPLITS, PretrainSettings, SmokeSettings, TinySize, ensure_smoke_assets, write_json

logger = logging.getLogger("experiments.smoke.pretrain")

# ==============================================================================================================
# 1. The grammar
# ==============================================================================================================
MALE_NAMES = ["john", "peter", "david", "paul", "mark", "james", "george", "henry", "thomas", "robert", "daniel",
              "samuel", "victor", "oscar", "felix", "hugo", "martin", "simon", "arthur", "edward"]
FEMALE_NAMES = ["mary", "anna", "sarah", "emma", "laura", "julia", "lucy", "alice", "helen", "clara", "sophie",
                "olivia", "grace", "rose", "nora", "irene", "diana", "maria", "eva", "ruth"]
MALE_PEOPLE = ["king", "prince", "father", "brother", "uncle", "boy", "man", "monk", "farmer", "sailor", "soldier",
               "fisherman", "baker", "hunter", "pilot", "blacksmith"]
FEMALE_PEOPLE = ["queen", "princess", "mother", "sister", "aunt", "girl", "woman", "nun", "teacher", "nurse",
                 "singer", "painter", "doctor", "lawyer", "writer", "dancer"]
GROUPS = ["farmers", "children", "soldiers", "students", "neighbours", "workers", "tourists", "players", "villagers",
          "musicians", "guests", "sailors"]
PERSON_ADJECTIVES = ["old", "young", "tall", "quiet", "famous", "clever", "brave", "kind", "angry", "happy", "poor",
                     "rich", "strong", "shy", "proud", "busy", "careful", "lazy", "honest", "friendly"]
TRANSITIVE_VERBS = ["repaired", "painted", "visited", "built", "sold", "bought", "found", "lost", "cleaned", "carried",
                    "opened", "closed", "wrote", "read", "cooked", "washed", "moved", "borrowed", "stole", "hid",
                    "broke", "fixed", "checked", "measured", "delivered", "ordered", "packed", "described",
                    "photographed", "examined", "decorated", "watched", "admired", "ignored", "replaced", "carved"]
THINGS = ["fence", "house", "boat", "car", "letter", "book", "bridge", "garden", "door", "window", "cake", "map",
          "table", "chair", "wall", "roof", "bicycle", "lamp", "basket", "coat", "ring", "clock", "picture", "box",
          "wagon", "mill", "tower", "barn", "shop", "piano", "violin", "statue", "tent", "cart", "kettle", "sword"]
THING_ADJECTIVES = ["red", "blue", "green", "small", "large", "wooden", "broken", "new", "old", "heavy", "strange",
                    "beautiful", "cheap", "expensive", "dusty", "golden", "white", "black", "tiny", "famous"]
PLACE_PREPOSITIONS = ["near", "in", "behind", "beside", "at"]
PLACES = ["the river", "the village", "the market", "the school", "the church", "the station", "the harbour",
          "the forest", "the castle", "the farm", "the bakery", "the hospital", "the museum", "the square",
          "the lake", "the hill", "the library", "the port", "the bridge", "the mountain"]
TIMES = ["yesterday", "last week", "in the morning", "in the evening", "on sunday", "on monday", "at night",
         "last year", "in the spring", "in the winter", "after lunch", "before dinner", "this morning"]
REASONS = ["was tired", "was hungry", "felt sick", "needed money", "wanted a new one", "had no time", "liked the color",
           "was in a hurry", "was very busy", "lost the key", "missed the train", "had a cold", "was afraid",
           "felt lonely", "was bored", "forgot the plan", "had a long day", "wanted to help", "was late",
           "needed a rest", "got a letter", "heard the news", "was curious", "felt happy", "was sad",
           "disliked the noise", "expected a storm", "made a promise", "won a prize", "saw a ghost"]


@dataclass(frozen=True)
class Person:
    phrase: str
    pronoun: str  # subject pronoun
    plural: bool = False


def _person(rng: random.Random) -> Person:
    roll = rng.random()
    if roll < 0.3:
        male = rng.random() < 0.5
        return Person(rng.choice(MALE_NAMES if male else FEMALE_NAMES), "he" if male else "she")
    if roll < 0.85:
        male = rng.random() < 0.5
        noun = rng.choice(MALE_PEOPLE if male else FEMALE_PEOPLE)
        adjective = rng.choice(PERSON_ADJECTIVES) + " " if rng.random() < 0.5 else ""
        return Person(f"the {adjective}{noun}", "he" if male else "she")
    adjective = rng.choice(PERSON_ADJECTIVES) + " " if rng.random() < 0.4 else ""
    return Person(f"the {adjective}{rng.choice(GROUPS)}", "they", plural=True)


def _thing(rng: random.Random) -> str:
    adjective = rng.choice(THING_ADJECTIVES) + " " if rng.random() < 0.6 else ""
    return f"the {adjective}{rng.choice(THINGS)}"


def _action(rng: random.Random) -> str:
    """A past-tense verb phrase: verb, object, and sometimes a place and a time."""
    parts = [rng.choice(TRANSITIVE_VERBS), _thing(rng)]
    if rng.random() < 0.4:
        parts.append(f"{rng.choice(PLACE_PREPOSITIONS)} {rng.choice(PLACES)}")
    if rng.random() < 0.3:
        parts.append(rng.choice(TIMES))
    return " ".join(parts)


def _reason(rng: random.Random, person: Person) -> str:
    reason = rng.choice(REASONS)
    return reason.replace("was ", "were ", 1) if person.plural and reason.startswith("was ") else reason


# Each template turns one person and two predicates into (two separate sentences, one fused sentence). Splitting
# drops the connective and repeats the full noun phrase where the fused sentence has a pronoun; fusing does the
# reverse — the two edits DiscoFuse and WikiSplit are built around.
def _orthography(text: str) -> str:
    """Punctuation attached to the word before it, as in running text: BERT's tokenizer splits it off and its
    decoder joins it back, so a reference survives a tokenise-decode round trip in every vocabulary."""
    return text.replace(" .", ".").replace(" ,", ",")


def _pair(rng: random.Random, template: str) -> tuple[str, str]:
    separate, fused = _pair_spaced(rng, template)
    return _orthography(separate), _orthography(fused)


def _pair_spaced(rng: random.Random, template: str) -> tuple[str, str]:
    p = _person(rng)
    act1, act2, why = _action(rng), _action(rng), _reason(rng, p)
    if template == "because":
        return f"{p.phrase} {act1} . {p.phrase} {why} .", f"{p.phrase} {act1} because {p.pronoun} {why} ."
    if template == "but":
        return f"{p.phrase} {act1} . however , {p.phrase} {why} .", f"{p.phrase} {act1} , but {p.pronoun} {why} ."
    if template == "and":
        return f"{p.phrase} {act1} . {p.phrase} {act2} .", f"{p.phrase} {act1} and {act2} ."
    if template == "so":
        return f"{p.phrase} {why} . therefore , {p.phrase} {act1} .", f"{p.phrase} {why} , so {p.pronoun} {act1} ."
    if template == "although":
        return (f"{p.phrase} {why} . however , {p.phrase} {act1} .",
                f"although {p.phrase} {why} , {p.pronoun} {act1} .")
    if template == "who":
        return f"{p.phrase} {act1} . {p.phrase} {why} .", f"{p.phrase} , who {why} , {act1} ."
    if template == "after":
        return f"{p.phrase} {act1} . then , {p.phrase} {act2} .", f"after {p.phrase} {act1} , {p.pronoun} {act2} ."
    raise ValueError(f"template: unknown {template!r}")


FUSION_TEMPLATES = ("because", "but", "and", "so", "although", "after")
SPLIT_TEMPLATES = ("because", "and", "who", "after", "but")
ALL_TEMPLATES = tuple(sorted(set(FUSION_TEMPLATES) | set(SPLIT_TEMPLATES)))


def _simple_sentence(rng: random.Random) -> str:
    p = _person(rng)
    if rng.random() < 0.7:
        return f"{p.phrase} {_action(rng)}."
    return f"{p.phrase} {_reason(rng, p)}."


def generate_corpus(num_documents: int, seed: int) -> list[str]:
    """Documents of one to three units; a unit is a simple sentence, a fused sentence or a pair of sentences."""
    rng = random.Random(seed)
    documents = []
    for _ in range(num_documents):
        units = []
        for _ in range(rng.randint(1, 3)):
            roll = rng.random()
            if roll < 0.3:
                units.append(_simple_sentence(rng))
            else:
                separate, fused = _pair(rng, rng.choice(ALL_TEMPLATES))
                units.append(fused if roll < 0.65 else separate)
        documents.append(" ".join(units))
    return documents


def generate_task(kind: str, num_examples: int, seed: int) -> list[dict[str, str]]:
    """``fusion``: two sentences → one; ``split``: one sentence → two. Examples are unique within a task."""
    if kind not in ("fusion", "split"):
        raise ValueError(f"task kind: expected 'fusion' or 'split', got {kind!r}")
    rng = random.Random(seed)
    templates = FUSION_TEMPLATES if kind == "fusion" else SPLIT_TEMPLATES
    seen: set[str] = set()
    examples = []
    while len(examples) < num_examples:
        separate, fused = _pair(rng, rng.choice(templates))
        source, target = (separate, fused) if kind == "fusion" else (fused, separate)
        if source in seen:
            continue
        seen.add(source)
        examples.append({"id": f"{kind}-{len(examples):06d}", "source": source, "target": target})
    return examples


# ==============================================================================================================
# 2. Vocabularies
# ==============================================================================================================
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0-3 as in roberta-base; "<mask>" is the last id
ROBERTA_MASK = "<mask>"
GPT2_EOS = "<|endoftext|>"  # the last id, as in gpt2 (50256)


def train_wordpiece(corpus: list[str], directory: Path, vocab_size: int) -> Path:
    """BERT uncased WordPiece: vocab.txt (specials first) plus the tokenizer config files of bert-base-uncased.

    The corpus is normalised and split into words by the ``tokenizers`` library's BERT normaliser and pre-tokenizer;
    the vocabulary is the specials, every character alone and as a continuation piece (``##c``, so any text still
    tokenises), then whole words, most frequent first. The grammar has a few hundred word types, so every word is one
    token, as common words are in BERT's own vocabulary. It is counted rather than learned by ``tokenizers``'
    WordPiece trainer because that trainer breaks ties between equally frequent merges in hash order, which differs
    from run to run — and the assets must be the same for the same content hash.
    """
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in corpus:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    characters = sorted({c for word in counts for c in word})
    vocab = list(BERT_SPECIALS) + characters + ["##" + c for c in characters]
    if len(vocab) > vocab_size:
        raise ValueError(f"wordpiece_vocab_size: {vocab_size} cannot hold the {len(vocab)} specials and characters")
    known = set(vocab)
    words = [w for w, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])) if w not in known]
    vocab += words[: vocab_size - len(vocab)]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    write_json(directory / "tokenizer_config.json", {
        "tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 128,
        "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]",
    })
    write_json(directory / "special_tokens_map.json", {
        "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]",
    })
    return directory / "vocab.txt"


def train_byte_level_bpe(corpus: list[str], vocab_size: int) -> tuple[list[str], list[str]]:
    """One byte-level BPE without special tokens: (tokens in id order, merges lines without the version header).

    Deterministic, unlike the WordPiece trainer: the byte alphabet is fixed, so equal merge counts tie the same way
    on every run (tests check it)."""
    tokenizer = ByteLevelBPETokenizer(add_prefix_space=False)
    tokenizer.train_from_iterator(corpus, vocab_size=vocab_size, min_frequency=2, show_progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_model(tmp)
        vocab = json.loads((Path(tmp) / "vocab.json").read_text(encoding="utf-8"))
        merges = [line for line in (Path(tmp) / "merges.txt").read_text(encoding="utf-8").splitlines()
                  if line and not line.startswith("#version")]
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    return tokens, merges


def write_bpe_vocabularies(tokens: list[str], merges: list[str], roberta_dir: Path, gpt2_dir: Path) -> None:
    """RoBERTa and GPT-2 share merges but not ids: RoBERTa puts <s> <pad> </s> <unk> first and <mask> last, GPT-2
    has only <|endoftext|>, last. Both directories get vocab.json, merges.txt and tokenizer_config.json."""
    merges_text = "#version: 0.2\n" + "\n".join(merges) + "\n"
    roberta_vocab = {token: i for i, token in enumerate(ROBERTA_SPECIALS)}
    roberta_vocab.update({token: i + len(ROBERTA_SPECIALS) for i, token in enumerate(tokens)})
    roberta_vocab[ROBERTA_MASK] = len(roberta_vocab)
    gpt2_vocab = {token: i for i, token in enumerate(tokens)}
    gpt2_vocab[GPT2_EOS] = len(gpt2_vocab)
    for directory, vocab, config in (
        (roberta_dir, roberta_vocab, {"tokenizer_class": "RobertaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                                      "sep_token": "</s>", "cls_token": "<s>", "unk_token": "<unk>",
                                      "pad_token": "<pad>", "mask_token": ROBERTA_MASK, "add_prefix_space": False,
                                      "model_max_length": 128}),
        (gpt2_dir, gpt2_vocab, {"tokenizer_class": "GPT2Tokenizer", "bos_token": GPT2_EOS, "eos_token": GPT2_EOS,
                                "unk_token": GPT2_EOS, "add_prefix_space": False, "model_max_length": 128}),
    ):
        directory.mkdir(parents=True, exist_ok=True)
        write_json(directory / "vocab.json", vocab)
        (directory / "merges.txt").write_text(merges_text, encoding="utf-8")
        write_json(directory / "tokenizer_config.json", config)


def _bpe_encoder(directory: Path):
    return ByteLevelBPETokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), add_prefix_space=False)


# ==============================================================================================================
# 3. Pretraining models
# ==============================================================================================================


class TinyMaskedLM(nn.Module):
    """A BERT or RoBERTa masked LM built around bertgen's ``BertGenerationEncoder``.

    Around the stack it has what the public MLM checkpoints have and bertgen folds or drops when warm-starting:
    a token-type table (row 0 is added to every token), a pooler (present in the checkpoints, unused by MLM) and the
    MLM head (dense → GELU → LayerNorm → tied output projection plus a bias).
    """

    def __init__(self, family: str, vocab_size: int, size: TinySize):
        super().__init__()

        if family not in ("bert", "roberta"):
            raise ValueError(f"family: expected 'bert' or 'roberta', got {family!r}")
        self.family = family
        roberta = family == "roberta"
        self.pad_token_id = 1 if roberta else 0
        self.config = BertGenerationConfig(
            vocab_size=vocab_size, hidden_size=size.hidden_size, num_hidden_layers=size.num_hidden_layers,
            num_attention_heads=size.num_attention_heads, intermediate_size=size.intermediate_size,
            max_position_embeddings=size.max_length + (2 if roberta else 0), hidden_act="gelu",
            hidden_dropout_prob=size.dropout, attention_probs_dropout_prob=size.dropout,
            layer_norm_eps=1e-5 if roberta else 1e-12, pad_token_id=self.pad_token_id,
            bos_token_id=0 if roberta else 2, eos_token_id=2 if roberta else 3,
            position_offset=2 if roberta else 0, is_decoder=False, add_cross_attention=False,
        )
        self.type_vocab_size = 1 if roberta else 2
        self.stack = BertGenerationEncoder(self.config)
        hidden = size.hidden_size
        self.token_type_embeddings = nn.Embedding(self.type_vocab_size, hidden)
        self.pooler = nn.Linear(hidden, hidden)
        self.head_dense = nn.Linear(hidden, hidden)
        self.head_norm = nn.LayerNorm(hidden, eps=self.config.layer_norm_eps)
        self.head_bias = nn.Parameter(torch.zeros(vocab_size))
        for module in (self.token_type_embeddings, self.pooler, self.head_dense):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [batch, length, vocab]; with ``labels`` (-100 where nothing is predicted) the mean masked-LM loss,
        running the vocabulary projection only on the predicted positions (15% of them)."""
        embeddings = self.stack.embeddings
        inputs = embeddings.word_embeddings(input_ids) + self.token_type_embeddings.weight[0]
        # RoBERTa positions depend on where the pads are, so compute them from the ids before they become embeddings.
        positions = embeddings.position_ids_for(input_ids, input_ids.size(1), 0, input_ids.device)
        hidden = self.stack(inputs_embeds=inputs, position_ids=positions, attention_mask=attention_mask).last_hidden_state
        if labels is not None:
            keep = labels.ne(-100)
            return F.cross_entropy(self._head(hidden[keep]), labels[keep])
        return self._head(hidden)

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.head_norm(F.gelu(self.head_dense(hidden)))
        return F.linear(hidden, self.stack.embeddings.word_embeddings.weight, self.head_bias)

    # -- HF layout -------------------------------------------------------------------------------------------
    def hf_config(self) -> dict[str, Any]:
        c = self.config
        roberta = self.family == "roberta"
        out = {
            "architectures": ["RobertaForMaskedLM" if roberta else "BertForMaskedLM"],
            "model_type": self.family, "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
            "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
            "intermediate_size": c.intermediate_size, "hidden_act": c.hidden_act,
            "hidden_dropout_prob": c.hidden_dropout_prob, "attention_probs_dropout_prob": c.attention_probs_dropout_prob,
            "max_position_embeddings": c.max_position_embeddings, "type_vocab_size": self.type_vocab_size,
            "initializer_range": c.initializer_range, "layer_norm_eps": c.layer_norm_eps,
            "pad_token_id": c.pad_token_id, "position_embedding_type": "absolute", "tie_word_embeddings": True,
        }
        if roberta:
            out.update(bos_token_id=0, eos_token_id=2)
        return out

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors under the names of ``BertForMaskedLM`` / ``RobertaForMaskedLM`` (plus the pooler, as the public
        checkpoints have it). The tied output projection is written as its own copy, as older checkpoints do."""
        base = "roberta." if self.family == "roberta" else "bert."
        state = {base + k: v for k, v in self.stack.state_dict().items()}
        state[base + "embeddings.token_type_embeddings.weight"] = self.token_type_embeddings.weight
        state[base + "pooler.dense.weight"] = self.pooler.weight
        state[base + "pooler.dense.bias"] = self.pooler.bias
        word = self.stack.embeddings.word_embeddings.weight
        if self.family == "roberta":
            head = {"lm_head.dense.weight": self.head_dense.weight, "lm_head.dense.bias": self.head_dense.bias,
                    "lm_head.layer_norm.weight": self.head_norm.weight, "lm_head.layer_norm.bias": self.head_norm.bias,
                    "lm_head.bias": self.head_bias, "lm_head.decoder.weight": word,
                    "lm_head.decoder.bias": self.head_bias}
        else:
            head = {"cls.predictions.transform.dense.weight": self.head_dense.weight,
                    "cls.predictions.transform.dense.bias": self.head_dense.bias,
                    "cls.predictions.transform.LayerNorm.weight": self.head_norm.weight,
                    "cls.predictions.transform.LayerNorm.bias": self.head_norm.bias,
                    "cls.predictions.bias": self.head_bias, "cls.predictions.decoder.weight": word,
                    "cls.predictions.decoder.bias": self.head_bias}
        state.update(head)
        return {k: v.detach().clone().contiguous() for k, v in state.items()}


def tiny_gpt2(vocab_size: int, size: TinySize, eos_token_id: int) -> nn.Module:
    """bertgen's ``GPT2LMHeadModel`` at the tiny size; its ``save_pretrained`` writes GPT-2's own layout (Conv1D
    weights transposed back to ``[in, out]``, ``transformer.`` prefix, tied ``lm_head`` left for the loader)."""

    config = GPT2Config(
        vocab_size=vocab_size, n_positions=size.max_length, n_embd=size.hidden_size, n_layer=size.num_hidden_layers,
        n_head=size.num_attention_heads, n_inner=size.intermediate_size, resid_pdrop=size.dropout,
        embd_pdrop=size.dropout, attn_pdrop=size.dropout, bos_token_id=eos_token_id, eos_token_id=eos_token_id,
    )
    return GPT2LMHeadModel(config)


# ==============================================================================================================
# 4. Pretraining
# ==============================================================================================================
def _pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
    return ids, mask


def mask_for_mlm(ids: torch.Tensor, attention_mask: torch.Tensor, special_ids: list[int], mask_id: int,
                 random_range: tuple[int, int], generator: torch.Generator,
                 probability: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: 15% of ordinary tokens are predicted; of those 80% become the mask token, 10% a random
    token, 10% stay. Returns (corrupted ids, labels with -100 on positions not predicted)."""
    ordinary = attention_mask.bool()
    for special in special_ids:
        ordinary &= ids.ne(special)
    chosen = (torch.rand(ids.shape, generator=generator) < probability) & ordinary
    if not chosen.any():  # a batch with nothing to predict would have a NaN loss
        first = ordinary.nonzero()[0]
        chosen[first[0], first[1]] = True
    labels = ids.masked_fill(~chosen, -100)
    roll = torch.rand(ids.shape, generator=generator)
    corrupted = ids.masked_fill(chosen & (roll < 0.8), mask_id)
    randomise = chosen & (roll >= 0.8) & (roll < 0.9)
    random_ids = torch.randint(random_range[0], random_range[1], ids.shape, generator=generator)
    corrupted = torch.where(randomise, random_ids, corrupted)
    return corrupted, labels


class _Objective:
    """Draws training batches and computes the loss of one model family; eval batches are fixed in advance."""

    def __init__(self, family: str, model: nn.Module, examples: list[list[int]], vocab: dict[str, int],
                 settings: PretrainSettings):
        self.family = family
        self.model = model
        self.examples = examples
        self.settings = settings
        self.generator = torch.Generator().manual_seed(settings.seed)
        if family == "bert":
            self.pad_id, self.mask_id = vocab["[PAD]"], vocab["[MASK]"]
            self.special_ids = [vocab[t] for t in BERT_SPECIALS]
            self.random_range = (len(BERT_SPECIALS), len(vocab))
        elif family == "roberta":
            self.pad_id, self.mask_id = vocab["<pad>"], vocab[ROBERTA_MASK]
            self.special_ids = [vocab[t] for t in ROBERTA_SPECIALS] + [self.mask_id]
            self.random_range = (len(ROBERTA_SPECIALS), len(vocab) - 1)
        else:
            self.pad_id = vocab[GPT2_EOS]
        eval_generator = torch.Generator().manual_seed(settings.seed + 1)
        held_out = examples[-settings.eval_batches * settings.batch_size:]
        self.train_examples = examples[: len(examples) - len(held_out)]
        self.eval_batches = []
        for b in range(settings.eval_batches):
            chunk = held_out[b * settings.batch_size: (b + 1) * settings.batch_size]
            self.eval_batches.append(self._make_batch(chunk, eval_generator))

    def _make_batch(self, sequences: list[list[int]], generator: torch.Generator):
        if self.family == "gpt2":
            return torch.tensor(sequences, dtype=torch.long), None, None
        ids, mask = _pad(sequences, self.pad_id)
        corrupted, labels = mask_for_mlm(ids, mask, self.special_ids, self.mask_id, self.random_range, generator)
        return corrupted, mask, labels

    def next_batch(self):
        picks = torch.randint(len(self.train_examples), (self.settings.batch_size,), generator=self.generator)
        return self._make_batch([self.train_examples[i] for i in picks.tolist()], self.generator)

    def loss(self, batch) -> torch.Tensor:
        ids, mask, labels = batch
        if self.family == "gpt2":
            return self.model(input_ids=ids, labels=ids).loss
        return self.model(ids, mask, labels)

    @torch.no_grad()
    def eval_loss(self) -> float:
        was_training = self.model.training
        self.model.eval()
        value = sum(self.loss(batch).item() for batch in self.eval_batches) / len(self.eval_batches)
        self.model.train(was_training)
        return value


def pretrain(objective: _Objective, settings: PretrainSettings) -> dict[str, float]:
    """A short run of Adam with warmup and linear decay; returns held-out loss before and after, and the time."""
    model = objective.model
    optimizer = build_optimizer(model.parameters(), betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0)
    schedule = LRSchedule(optimizer, "linear", lr=settings.lr, warmup_steps=settings.warmup_steps,
                          total_steps=settings.steps)
    before = objective.eval_loss()
    start = time.perf_counter()
    model.train()
    for _ in range(settings.steps):
        loss = objective.loss(objective.next_batch())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"pretraining {objective.family}: loss became {loss.item()}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    seconds = time.perf_counter() - start
    model.eval()
    after = objective.eval_loss()
    logger.info("pretrained %s: held-out loss %.3f → %.3f in %.1fs", objective.family, before, after, seconds)
    return {"eval_loss_before": before, "eval_loss_after": after, "seconds": seconds, "steps": settings.steps}


def _save_hf_checkpoint(model: nn.Module, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    save_file(model.hf_state_dict(), str(directory / "model.safetensors"), metadata={"format": "pt"})
    write_json(directory / "config.json", model.hf_config())


# ==============================================================================================================
# 5. Assets: build once per content hash
# ==============================================================================================================


def _write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_tasks(directory: Path, settings: SmokeSettings) -> dict[str, dict[str, str]]:
    """Fusion and split tasks; the three splits of a task come from one stream, so no source is in two splits."""
    out: dict[str, dict[str, str]] = {}
    for kind, seed in sorted(settings.task_seeds.items()):
        total = sum(settings.task_sizes[s] for s in TASK_SPLITS)
        examples = generate_task(kind, total, seed)
        start = 0
        out[kind] = {}
        for split in TASK_SPLITS:
            rows = examples[start: start + settings.task_sizes[split]]
            start += settings.task_sizes[split]
            path = directory / kind / f"{split}.jsonl"
            _write_jsonl(path, [{**row, "id": f"{kind}-{split}-{i:05d}"} for i, row in enumerate(rows)])
            out[kind][split] = str(path)
    return out


def _pack(documents: list[list[int]], length: int, start: list[int], separator: int) -> list[list[int]]:
    """Documents joined into sequences of at most ``length`` ids: ``start d1 sep d2 sep …`` (as BERT and RoBERTa
    pretrain on full sequences), so batches carry almost no padding."""
    sequences, current = [], list(start)
    for doc in documents:
        doc = doc[: length - len(start) - 1]
        if len(current) + len(doc) + 1 > length:
            sequences.append(current)
            current = list(start)
        current.extend(doc)
        current.append(separator)
    if len(current) > len(start):
        sequences.append(current)
    return sequences


def _tokenize_corpus(corpus: list[str], family: str, directory: Path, settings: SmokeSettings) -> list[list[int]]:
    """Training sequences of ``settings.sequence_length`` tokens (GPT-2: one more, for the shifted targets)."""
    length = settings.sequence_length
    if family == "bert":
        tokenizer = BertWordPieceTokenizer(str(directory / "vocab.txt"), lowercase=True)
        vocab = tokenizer.get_vocab()
        documents = [enc.ids for enc in tokenizer.encode_batch(corpus, add_special_tokens=False)]
        return _pack(documents, length, [vocab["[CLS]"]], vocab["[SEP]"])
    tokenizer = _bpe_encoder(directory)
    vocab = tokenizer.get_vocab()
    documents = [enc.ids for enc in tokenizer.encode_batch(corpus)]
    if family == "roberta":
        return _pack(documents, length, [vocab["<s>"]], vocab["</s>"])
    # GPT-2: one stream with <|endoftext|> before every document, cut into equal blocks (no padding).
    eos = vocab[GPT2_EOS]
    stream: list[int] = []
    for doc in documents:
        stream.append(eos)
        stream.extend(doc)
    block = length + 1
    return [stream[i: i + block] for i in range(0, len(stream) - block + 1, block)]


def _vocab_of(family: str, directory: Path) -> dict[str, int]:
    """The vocabulary just written, read back by the library's checked readers (what every cell will read)."""
    if family == "bert":
        return read_wordpiece_vocab(directory / "vocab.txt")
    return read_bpe_vocab(directory / "vocab.json")


def build_assets(directory: Path, settings: SmokeSettings) -> dict[str, Any]:
    """Everything, into ``directory`` (which should be empty); returns the manifest.

    Runs on one intra-op thread: 64-wide matrices gain nothing from more, and on a shared 2-core machine spinning
    worker threads made pretraining five times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _build_assets(directory, settings)
    finally:
        torch.set_num_threads(threads)


def _build_assets(directory: Path, settings: SmokeSettings) -> dict[str, Any]:
    directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    corpus = generate_corpus(settings.corpus_documents, settings.corpus_seed)
    (directory / "corpus.txt").write_text("\n".join(corpus) + "\n", encoding="utf-8")
    dirs = {family: directory / family for family in ("bert", "roberta", "gpt2")}
    train_wordpiece(corpus, dirs["bert"], settings.wordpiece_vocab_size)
    tokens, merges = train_byte_level_bpe(corpus, settings.bpe_vocab_size)
    write_bpe_vocabularies(tokens, merges, dirs["roberta"], dirs["gpt2"])

    report: dict[str, Any] = {}
    for index, family in enumerate(("bert", "roberta", "gpt2")):
        vocab = _vocab_of(family, dirs[family])
        examples = _tokenize_corpus(corpus, family, dirs[family], settings)
        torch.manual_seed(settings.pretrain.seed + index)
        size = dataclasses.replace(settings.size, dropout=settings.pretrain.dropout)
        if family == "gpt2":
            model: nn.Module = tiny_gpt2(len(vocab), size, eos_token_id=vocab[GPT2_EOS])
        else:
            model = TinyMaskedLM(family, len(vocab), size)
        objective = _Objective(family, model, examples, vocab, settings.pretrain)
        report[family] = pretrain(objective, settings.pretrain)
        p = settings.size.dropout
        if family == "gpt2":
            model.config = model.config.replace(resid_pdrop=p, embd_pdrop=p, attn_pdrop=p)
            model.save_pretrained(dirs[family])
        else:
            model.config = model.config.replace(hidden_dropout_prob=p, attention_probs_dropout_prob=p)
            _save_hf_checkpoint(model, dirs[family])

    tasks = write_tasks(directory / "tasks", settings)
    manifest = {
            "root": str(directory),
        "checkpoints": {family: str(path) for family, path in dirs.items()},
        "tasks": tasks,
        "pretraining": report,
        "build_seconds": time.perf_counter() - started,
        "settings": asdict(settings),
    }
    write_json(directory / MANIFEST, manifest)
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.smoke.pretrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="directory the assets go under (smoke-<hash>/)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    manifest = ensure_smoke_assets(args.out)
    print(json.dumps({k: manifest[k] for k in ("root", "checkpoints", "tasks", "pretraining")}, indent=2))


if __name__ == "__main__":
    main()
