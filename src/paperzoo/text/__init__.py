"""Text: tokenizers, corpora, the built-in translation task, metrics, and the translation / LM tasks.

* :mod:`.tokenizers` — :class:`CharTokenizer`, :class:`SentencePieceTokenizer` (BPE / unigram), save/load, checks.
* :mod:`.data` — parallel corpora (TSV or two files), LM corpora, length-bucketed resumable batches.
* :mod:`.tasks_builtin` — English dates and numbers into Korean, French or German (Babel + num2words).
* :mod:`.metrics` — sacreBLEU, chrF, exact match, perplexity.
* :mod:`.tasks` — :class:`TranslationTask` / :class:`LanguageModelTask` for the shared trainer,
  :func:`train_translation`, :func:`train_lm`, :func:`load_text_checkpoint`, :func:`translate`.

See docs/text.md for the CLI (``paperzoo translate``, ``paperzoo lm``) and a Python example.
"""

from .config import TextConfig, load_text_config
from .metrics import bleu, chrf, exact_match, perplexity, translation_metrics
from .tasks import LanguageModelTask, TranslationTask, load_text_checkpoint, train_lm, train_translation, translate
from .tasks_builtin import make_builtin_pairs
from .tokenizers import CharTokenizer, SentencePieceTokenizer, TokenizerMismatchError, load_tokenizer

__all__ = ["CharTokenizer", "LanguageModelTask", "SentencePieceTokenizer", "TextConfig", "TokenizerMismatchError",
           "TranslationTask", "bleu", "chrf", "exact_match", "load_text_checkpoint", "load_text_config",
           "load_tokenizer", "make_builtin_pairs", "perplexity", "train_lm", "train_translation", "translate",
           "translation_metrics"]
