"""The data layer: corpora -> tokenizers -> token stores (see docs/design.md, "Data layer").

from replaylab.data import get_store, get_tokenizer
store = get_store("code", tokenizer="default")          # built and cached on first use
idx = store.budget_indices(seq_len=256, n=64, seed=0)   # a nested target budget
batch = store.sequences("train", 256, idx[:16])          # int64 [16, 257]
"""

from replaylab.data.corpus import CorpusOptions, CorpusStats, iter_documents
from replaylab.data.store import StoreOptions, TokenStore, get_store, list_stores, open_store
from replaylab.data.tokenizer import Tokenizer, get_tokenizer, load_tokenizer, train_tokenizer

__all__ = [
    "CorpusOptions",
    "CorpusStats",
    "iter_documents",
    "StoreOptions",
    "TokenStore",
    "get_store",
    "list_stores",
    "open_store",
    "Tokenizer",
    "get_tokenizer",
    "load_tokenizer",
    "train_tokenizer",
]
