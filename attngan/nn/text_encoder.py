"""DAMSM text encoder: word features and a sentence vector (docs/DESIGN.md, "Text encoder").

AttnGAN (Xu et al., 2018, section 3.3) encodes a caption with a bi-directional LSTM: each word's
feature e_t is the concatenation of the two directions' hidden states at that word (the columns
of e in R^{D x T}), and the sentence vector ē is the concatenation of the last hidden states of
the two directions. Word features drive the word-level DAMSM matching (Eq. 7-10) and the
generator's word attention; the sentence vector drives the sentence-level DAMSM loss, the
conditioning augmentation and the conditional discriminators.

As the official code computes it: Embedding(vocab, embedding_dim) initialized U(-0.1, 0.1),
dropout on the embeddings, one bi-directional layer with hidden_dim // 2 units per direction,
batch first, over packed sequences, so the padded slots after a caption's end never enter the
recurrence and the backward direction starts at the caption's last real word. Output row b is
caption b: the batch is packed longest first (as `enforce_sorted=False` would) and put back in
order here, with the permutations made on the CPU and copied without waiting, so that captions
and lengths kept on the CPU cost a GPU encoder no synchronisation (PyTorch's unsorted packing
copies its permutation back to the CPU).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from attngan.config import ConfigError, TextEncoderConfig

__all__ = ["TextEncoder"]

_RNNS = {"lstm": nn.LSTM, "gru": nn.GRU}


class TextEncoder(nn.Module):
    """Bi-directional LSTM (or GRU) caption encoder.

    Args:
        vocab_size: number of word ids (index 0 is the padding word "<end>").
        config: TextEncoderConfig (embedding_dim, hidden_dim = D, rnn, dropout).

    forward(captions [B, L] integer, lengths [B] integer) -> (words [B, D, L], sentence [B, D])
        words[b, :, t] is word t's feature for t < lengths[b] and exactly 0 for t >= lengths[b];
        sentence[b] is [last forward hidden state, last backward hidden state]. Token ids in
        padded slots are never read. captions and lengths may live on the CPU or on the
        encoder's device: on the CPU they are checked there and copied without waiting (packing
        needs lengths on the CPU, and the id check reads the ids), so a GPU encoder need not
        synchronise; on the GPU the checks cost a synchronisation each.
    """

    def __init__(self, vocab_size: int, config: TextEncoderConfig):
        super().__init__()
        if vocab_size < 1:
            raise ValueError(
                f"TextEncoder needs a vocabulary of at least one word, got vocab_size={vocab_size}"
            )
        if config.rnn not in _RNNS:
            raise ConfigError(
                f"text_encoder.rnn must be one of {', '.join(_RNNS)}, "
                f"got {config.rnn!r}; set text_encoder.rnn=lstm"
            )
        if config.hidden_dim < 2 or config.hidden_dim % 2:
            raise ConfigError(
                f"text_encoder.hidden_dim must be an even number >= 2 (it is split "
                f"between the two directions), got {config.hidden_dim}"
            )
        if config.embedding_dim < 1:
            raise ConfigError(
                f"text_encoder.embedding_dim must be >= 1, got {config.embedding_dim}"
            )
        if not 0.0 <= config.dropout < 1.0:
            raise ConfigError(f"text_encoder.dropout must be in [0, 1), got {config.dropout}")
        self.vocab_size = vocab_size
        self.embed_dim = config.hidden_dim
        self.rnn_type = config.rnn
        self.encoder = nn.Embedding(vocab_size, config.embedding_dim)
        self.drop = nn.Dropout(config.dropout)
        self.rnn = _RNNS[config.rnn](
            config.embedding_dim,
            config.hidden_dim // 2,
            num_layers=1,
            batch_first=True,
            bidirectional=True,
        )
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)

    def _check_inputs(self, captions: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Validate shapes and lengths; return the lengths as a CPU int64 tensor."""
        if captions.dim() != 2 or captions.dtype.is_floating_point or captions.dtype == torch.bool:
            raise ValueError(
                f"captions must be an integer tensor [B, L] of word ids, got "
                f"{captions.dtype} of shape {tuple(captions.shape)}"
            )
        batch, max_len = captions.shape
        if (
            lengths.dim() != 1
            or lengths.shape[0] != batch
            or lengths.dtype.is_floating_point
            or lengths.dtype == torch.bool
        ):
            raise ValueError(
                f"lengths must be an integer tensor [B] with B={batch} (one length "
                f"per caption), got {lengths.dtype} of shape {tuple(lengths.shape)}"
            )
        lengths_cpu = lengths.detach().to("cpu", torch.int64)
        if batch == 0 or max_len == 0:
            raise ValueError(
                f"captions must hold at least one caption of at least one word, "
                f"got shape {tuple(captions.shape)}"
            )
        low, high = int(lengths_cpu.min()), int(lengths_cpu.max())
        if low < 1 or high > max_len:
            bad = int(torch.nonzero((lengths_cpu < 1) | (lengths_cpu > max_len))[0, 0])
            raise ValueError(
                f"caption {bad} has length {int(lengths_cpu[bad])}, outside "
                f"[1, {max_len}] (L = captions.shape[1]); every caption needs at "
                f"least one word and no more words than the padded width"
            )
        return lengths_cpu

    def forward(
        self, captions: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        lengths_cpu = self._check_inputs(captions, lengths)
        batch, max_len = captions.shape
        device = self.encoder.weight.device
        if captions.device not in (device, torch.device("cpu")):
            where = "" if device.type == "cpu" else f" or on {device}"
            raise ValueError(
                f"captions are on {captions.device} but the text encoder on {device}; "
                f"put captions on the CPU{where}"
            )
        positions = torch.arange(max_len, device=captions.device)
        valid = positions[None, :] < lengths_cpu.to(captions.device, non_blocking=True)[:, None]
        # Padded slots may hold anything (even ids outside the vocabulary): read id 0 there.
        tokens = captions.long().masked_fill(~valid, 0)
        low, high = torch.stack(torch.aminmax(tokens)).tolist()
        if low < 0 or high >= self.vocab_size:
            raise ValueError(
                f"captions hold word id {low if low < 0 else high}, outside the "
                f"vocabulary of {self.vocab_size} words this text encoder was built "
                "for; encode captions with the vocabulary of its data set"
            )
        # Longest first for packing, and the inverse permutation to put the batch back.
        order = torch.argsort(lengths_cpu, descending=True, stable=True)
        order_on_device, restore = (
            index.to(device, non_blocking=True) for index in (order, torch.argsort(order))
        )

        emb = self.drop(self.encoder(tokens.to(device, non_blocking=True)))  # [B, L, E]
        packed = pack_padded_sequence(
            emb.index_select(0, order_on_device), lengths_cpu[order], batch_first=True
        )
        output, hidden = self.rnn(packed)
        # Packing zero-fills the slots after each caption's end; pad back to the full L.
        output, _ = pad_packed_sequence(output, batch_first=True, total_length=max_len)
        words = output.index_select(0, restore).transpose(1, 2).contiguous()  # [B, D, L]
        last = hidden[0] if self.rnn_type == "lstm" else hidden  # [2, B, D/2], sorted
        sentence = last.index_select(1, restore).transpose(0, 1).reshape(batch, self.embed_dim)
        return words, sentence  # sentence: fwd, bwd
