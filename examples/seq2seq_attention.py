"""Sequence to sequence with attention: reverse digit strings.

A GRU encoder and a GRU decoder with Bahdanau attention (the classic tutorial
architecture), trained with teacher forcing on random digit strings generated
here. ``--engine torch`` uses torch.nn modules; ``--engine fastrnn`` uses
``fastrnn_torch`` (GRU, GRUCell, AdditiveAttention) for training, then decodes
greedily on the core alone: ``fastrnn.GRU`` for the encoder, the decoder
cell's ``step``, ``fastrnn.attention.additive`` and NumPy for the rest.

    python examples/seq2seq_attention.py --engine fastrnn [--epochs 8]
"""

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

import fastrnn
import fastrnn_torch as frt

SOS, EOS, DIGITS = 10, 11, 10
VOCAB = 12


def make_data(n, rng, min_len=3, max_len=8):
    """Random digit strings and their reversals, padded with EOS."""
    lengths = rng.integers(min_len, max_len + 1, size=n)
    src = np.full((n, max_len), EOS, np.int64)
    tgt = np.full((n, max_len + 1), EOS, np.int64)
    for i, L in enumerate(lengths):
        digits = rng.integers(0, DIGITS, size=L)
        src[i, :L] = digits
        tgt[i, :L] = digits[::-1]
    return torch.from_numpy(src), torch.from_numpy(tgt), torch.from_numpy(lengths)


class TorchAdditive(torch.nn.Module):
    """Bahdanau attention in plain torch, parameters named like frt.AdditiveAttention."""

    def __init__(self, query_size, key_size, hidden_size):
        super().__init__()
        self.W_q = torch.nn.Linear(query_size, hidden_size, bias=False)
        self.W_k = torch.nn.Linear(key_size, hidden_size, bias=False)
        self.v = torch.nn.Linear(hidden_size, 1, bias=False)

    def forward(self, query, keys, values, mask=None):
        scores = self.v(torch.tanh(self.W_q(query)[:, None] + self.W_k(keys)))[..., 0]
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        w = torch.softmax(scores, dim=1)
        return torch.bmm(w[:, None], values)[:, 0], w


class Seq2Seq(torch.nn.Module):
    def __init__(self, engine, hidden=64):
        super().__init__()
        nn = frt if engine == "fastrnn" else torch.nn
        attention = frt.AdditiveAttention if engine == "fastrnn" else TorchAdditive
        self.hidden = hidden
        self.src_embed = torch.nn.Embedding(VOCAB, hidden)
        self.tgt_embed = torch.nn.Embedding(VOCAB, hidden)
        self.encoder = nn.GRU(hidden, hidden, batch_first=True)
        self.attention = attention(hidden, hidden, hidden)
        self.decoder = nn.GRUCell(2 * hidden, hidden)
        self.out = torch.nn.Linear(hidden, VOCAB)

    def encode(self, src, lengths):
        keys, h = self.encoder(self.src_embed(src))
        mask = torch.arange(src.shape[1])[None] < lengths[:, None]
        return keys, h[0], mask

    def forward(self, src, lengths, tgt):
        """Teacher forcing: logits (B, T_tgt, VOCAB)."""
        keys, h, mask = self.encode(src, lengths)
        inp = torch.full((src.shape[0],), SOS, dtype=torch.int64)
        logits = []
        for t in range(tgt.shape[1]):
            context, _ = self.attention(h, keys, keys, mask)
            h = self.decoder(torch.cat([self.tgt_embed(inp), context], dim=1), h)
            logits.append(self.out(h))
            inp = tgt[:, t]
        return torch.stack(logits, dim=1)

    @torch.no_grad()
    def greedy_torch(self, src, lengths, steps):
        keys, h, mask = self.encode(src, lengths)
        inp = torch.full((src.shape[0],), SOS, dtype=torch.int64)
        out = []
        for _ in range(steps):
            context, _ = self.attention(h, keys, keys, mask)
            h = self.decoder(torch.cat([self.tgt_embed(inp), context], dim=1), h)
            inp = self.out(h).argmax(dim=1)
            out.append(inp)
        return torch.stack(out, dim=1)


class CoreDecoder:
    """The trained model on fastrnn's core: no torch in the decoding loop."""

    def __init__(self, model):
        sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
        H = model.hidden
        self.src_embed, self.tgt_embed = sd["src_embed.weight"], sd["tgt_embed.weight"]
        self.encoder = fastrnn.GRU(H, H, batch_first=True)
        self.encoder.load_state_dict(
            {k[len("encoder.") :]: v for k, v in sd.items() if k.startswith("encoder.")}
        )
        self.decoder = fastrnn.GRU(2 * H, H)
        self.decoder.load_state_dict(
            {k[len("decoder.") :] + "_l0": v for k, v in sd.items() if k.startswith("decoder.")}
        )
        self.W_q, self.W_k = sd["attention.W_q.weight"], sd["attention.W_k.weight"]
        self.v = sd["attention.v.weight"][0]
        self.W_out, self.b_out = sd["out.weight"], sd["out.bias"]

    def greedy(self, src, lengths, steps):
        src, lengths = src.numpy(), lengths.numpy()
        keys, h = self.encoder(self.src_embed[src])  # as in training: padding included
        keys = np.ascontiguousarray(keys)
        mask = np.arange(src.shape[1])[None] < lengths[:, None]
        state = h
        inp = np.full(src.shape[0], SOS)
        out = []
        for _ in range(steps):
            context, _ = fastrnn.attention.additive(
                state[0], keys, keys, self.W_q, self.W_k, self.v, mask
            )
            x = np.concatenate([self.tgt_embed[inp], context], axis=1)
            h_t, state = self.decoder.step(x, state)  # streaming step, no allocation
            inp = np.argmax(h_t @ self.W_out.T + self.b_out, axis=1)
            out.append(inp)
        return torch.from_numpy(np.stack(out, axis=1))


def exact_match(pred, tgt, lengths):
    ok = [(pred[i, : L + 1] == tgt[i, : L + 1]).all().item() for i, L in enumerate(lengths)]
    return float(np.mean(ok))


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--engine",
        choices=["torch", "fastrnn"],
        default="fastrnn",
        help="torch.nn, fastrnn_torch or both (default: %(default)s)",
    )
    ap.add_argument("--epochs", type=int, default=8, help="training epochs (default: %(default)s)")
    ap.add_argument("--batches", type=int, default=100, help="batches per epoch")
    ap.add_argument("--batch", type=int, default=64, help="batch size (default: %(default)s)")
    ap.add_argument("--hidden", type=int, default=64, help="hidden size (default: %(default)s)")
    ap.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed for data and weights (default: %(default)s)",
    )
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = Seq2Seq(args.engine, args.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    test_src, test_tgt, test_len = make_data(500, np.random.default_rng(12345))
    accuracy = 0.0
    for epoch in range(args.epochs):
        start = time.perf_counter()
        for _ in range(args.batches):
            src, tgt, lengths = make_data(args.batch, rng)
            logits = model(src, lengths, tgt)
            loss = F.cross_entropy(logits.reshape(-1, VOCAB), tgt.reshape(-1))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        train_time = time.perf_counter() - start
        start = time.perf_counter()
        if args.engine == "fastrnn":
            pred = CoreDecoder(model).greedy(test_src, test_len, test_tgt.shape[1])
        else:
            pred = model.greedy_torch(test_src, test_len, test_tgt.shape[1])
        decode_time = time.perf_counter() - start
        accuracy = exact_match(pred, test_tgt, test_len)
        print(
            f"[{args.engine}] epoch {epoch + 1}: loss {loss.item():.4f}  held-out exact match "
            f"{accuracy:6.1%}  train {train_time:5.2f} s/epoch  greedy decode of 500 "
            f"{decode_time * 1e3:6.1f} ms"
        )
    return accuracy


if __name__ == "__main__":
    main()
