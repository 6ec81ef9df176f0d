"""harness.check.lint: each rule flags a small synthetic script at the exact line and stays silent on a
legitimate look-alike; odd files never raise. Scripts are written here, line numbers counted
from 1 at the first line of the dedented text."""
from __future__ import annotations

import base64
import lzma
import textwrap

from harness.findings import FAIL, WARN
from harness.check.lint import lint_files


def lint(tmp_path, code: str | bytes, name: str = "train_gpt.py"):
    path = tmp_path / name
    if isinstance(code, str):
        path.write_text(textwrap.dedent(code).lstrip("\n"), encoding="utf-8")
    else:
        path.write_bytes(code)
    return lint_files(tmp_path, [path])


def hits(findings, code):
    return [(f.status, f.evidence[0].line) for f in findings if f.code == code]


# --- val_in_training ----------------------------------------------------------------------

VAL_AS_TRAIN = """
import os
class Hyperparameters:
    data_path = os.environ.get("DATA_PATH", "./data")
    train_files = os.path.join(data_path, "fineweb_val_*.bin")
    val_files = os.path.join(data_path, "fineweb_val_*.bin")
"""

VAL_INTO_LOADER_AND_GPTQ = """
def main(args):
    val_tokens = load_validation_tokens(args.val_files, 1024)
    train_loader = DistributedTokenLoader(args.val_files, 0, 1)
    hessians = collect_hessians(model, val_tokens[:65536])
    mixed = torch.cat([train_tokens, val_tokens])
"""

VAL_ONLY_IN_EVAL = """
def main(args):
    train_loader = DistributedTokenLoader(args.train_files, 0, 1)
    val_tokens = load_validation_tokens(args.val_files, 1024)
    val_loader = DistributedTokenLoader(args.val_files, 0, 1)
    hessians = collect_hessians(model, train_loader)
    for step in range(10):
        x, y = train_loader.next_batch()
        loss = model(x, y)
        loss.backward()
        opt.step()
        val_loss, val_bpb = eval_val(args, model, val_tokens)
    log0(f"train_shards: {args.train_files} val_loader:shards pattern={args.val_files}")
"""


def test_val_bound_to_train_files(tmp_path):
    assert hits(lint(tmp_path, VAL_AS_TRAIN), "lint.val_in_training") == [(WARN, 4)]


def test_val_into_training_loader_calibration_and_concat(tmp_path):
    assert hits(lint(tmp_path, VAL_INTO_LOADER_AND_GPTQ), "lint.val_in_training") == [(WARN, 3), (WARN, 4), (WARN, 5)]


def test_val_used_only_for_eval_is_clean(tmp_path):
    assert lint(tmp_path, VAL_ONLY_IN_EVAL) == []


# --- prequant_ttt -------------------------------------------------------------------------

PREQUANT = """
def ttt_adapt(model, val_tokens, epochs):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for epoch in range(epochs):
        for i in range(0, val_tokens.numel() - 1025, 1024):
            chunk = val_tokens[i:i + 1025]
            loss = model(chunk[:-1], chunk[1:])
            loss.backward()
            opt.step()

def main(model, val_tokens):
    ttt_adapt(model, val_tokens, 3)
    serialize(model)
"""

RESCORED_PER_EPOCH = """
def ttt(model, val_tokens, opt, total=0.0):
    for epoch in range(3):
        for i in range(0, 4096, 1024):
            x = val_tokens[i:i + 1024]
            with torch.no_grad():
                total += model(x).item()
            loss = model(x)
            loss.backward()
            opt.step()
"""

SCORE_FIRST = """
def eval_val_ttt(model, val_tokens, opt):
    loss_sum = 0.0
    for ci in range(0, val_tokens.numel() - 1, 1024):
        chunk = val_tokens[ci:ci + 1025]
        with torch.no_grad():
            loss_sum += model(chunk[:-1], chunk[1:]).item()
        for ep in range(2):
            loss = model(chunk[:-1], chunk[1:])
            loss.backward()
            opt.step()
    return loss_sum

def global_sgd(model, val_tokens, opt):
    loss = model(val_tokens[:-1], val_tokens[1:])
    loss.backward()
    opt.step()

def eval_phased(model, val_data, opt):
    for phase in range(3):
        with torch.no_grad():
            score(model, val_data)
        global_sgd(model, val_data.val_tokens, opt)

def main(model, val_tokens, opt):
    serialize(model)
    eval_val_ttt(deserialize(), val_tokens, opt)
"""


def test_prequant_ttt_flags_update_and_call_before_serialize(tmp_path):
    assert hits(lint(tmp_path, PREQUANT), "lint.prequant_ttt") == [(WARN, 7), (WARN, 11)]


def test_scoring_inside_an_epoch_loop_is_not_score_first(tmp_path):
    assert hits(lint(tmp_path, RESCORED_PER_EPOCH), "lint.prequant_ttt") == [(WARN, 8)]


def test_score_first_ttt_is_clean(tmp_path):
    assert lint(tmp_path, SCORE_FIRST) == []


# --- slot_etlb ----------------------------------------------------------------------------

SLOT = """
import os
_B = True
slot_enabled = bool(int(os.environ.get("SLOT_ENABLED", "1")))

def eval_slot(model, hidden, proj_w, y, steps):
    delta = torch.zeros(1, 1, hidden.size(-1), requires_grad=_B)
    opt = torch.optim.AdamW([delta], lr=0.01)
    for _ in range(steps):
        logits = (hidden + delta) @ proj_w.T
        F.cross_entropy(logits.flatten(0, 1), y.flatten()).backward()
        opt.step()
    return (hidden + delta) @ proj_w.T
"""

ETLB_OFF = """
etlb_enabled = bool(int(os.environ.get('ETLB_ENABLED', '0')))
"""

LORA_TTT = """
def eval_lora(model, lora, x, y):
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(lora.parameters(), lr=1e-3)
    out = model(x) + lora(x)
    slot = 3
"""


def test_slot_switch_on_by_default_fails_and_delta_warns(tmp_path):
    assert hits(lint(tmp_path, SLOT), "lint.slot_etlb") == [(FAIL, 3), (WARN, 6)]


def test_etlb_switch_off_by_default_warns(tmp_path):
    assert hits(lint(tmp_path, ETLB_OFF), "lint.slot_etlb") == [(WARN, 1)]


def test_lora_ttt_and_model_parameters_are_not_slot(tmp_path):
    assert lint(tmp_path, LORA_TTT) == []


# --- ngram_mix ----------------------------------------------------------------------------

NGRAM = """
class NgramCache:
    def lookup(self, ctx_hash, tgt, mask):
        return (ctx_hash ^ (tgt * 36313)) & mask

    def mix(self, neural_p, ngram_p, alpha):
        return (1.0 - alpha) * neural_p + alpha * ngram_p
"""

BIGRAM_HASH_EMBEDDING = """
class BigramHash(nn.Module):
    def forward(self, input_ids):
        h = torch.bitwise_xor(36313 * input_ids[:, 1:], 27191 * input_ids[:, :-1]) % self.size
        return self.embed(h)

def ema_update(ema, p, decay):
    return decay * ema + (1 - decay) * p
"""


def test_target_keyed_hash_and_ngram_interpolation(tmp_path):
    assert hits(lint(tmp_path, NGRAM), "lint.ngram_mix") == [(WARN, 3), (WARN, 6)]


def test_bigram_hash_embedding_and_ema_are_clean(tmp_path):
    assert lint(tmp_path, BIGRAM_HASH_EMBEDDING) == []


# --- network ------------------------------------------------------------------------------

NETWORK = """
import os, sys
import urllib.request
from huggingface_hub import hf_hub_download
subprocess.run(["wget", "https://example.com/x.bin"])
"""

NO_NETWORK = """
'''Data comes from requests made offline; no socket is opened.'''
import os
# import socket
subprocess.run(["nvidia-smi"], capture_output=True)
"""


def test_network_imports_downloads_and_wget(tmp_path):
    assert hits(lint(tmp_path, NETWORK), "lint.network") == [(WARN, 2), (WARN, 3), (WARN, 4)]


def test_words_in_comments_and_docstrings_are_not_network(tmp_path):
    assert lint(tmp_path, NO_NETWORK) == []


# --- hardcoded_bytes_per_token ------------------------------------------------------------

HARDCODED_BPT = """
import math
BYTES_PER_TOKEN = 2.436

def final_bpb(val_loss):
    return val_loss / math.log(2) / 3.727
"""

BYTES_FROM_TOKENIZER = """
import math
def eval_bpb(val_loss, token_count, base_bytes_lut, y):
    byte_count = base_bytes_lut[y].sum()
    tokens_per_byte = token_count / byte_count
    return val_loss / math.log(2.0) * tokens_per_byte
"""


def test_hardcoded_bytes_per_token(tmp_path):
    assert hits(lint(tmp_path, HARDCODED_BPT), "lint.hardcoded_bytes_per_token") == [(WARN, 2), (WARN, 5)]


def test_bytes_counted_from_tokenizer_lut_is_clean(tmp_path):
    assert lint(tmp_path, BYTES_FROM_TOKENIZER) == []


# --- wrappers, odd files, speed -----------------------------------------------------------


def test_exec_wrapper_is_unpacked_and_points_at_exec_line(tmp_path):
    inner = textwrap.dedent(SLOT).lstrip("\n").encode()
    blob = base64.b85encode(lzma.compress(inner, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}]))
    raw = 'format=L.FORMAT_RAW,filters=[{"id":L.FILTER_LZMA2}]'
    wrapper = f'import lzma as L,base64 as B\nexec(L.decompress(B.b85decode("{blob.decode()}"),{raw}))\n'
    findings = lint(tmp_path, wrapper)
    assert hits(findings, "lint.slot_etlb") == [(FAIL, 2), (WARN, 2)]
    assert findings[0].evidence[0].text.startswith("slot_enabled = ")
    assert "line 3 of the code" in findings[0].message


def test_python312_fstrings_still_parse(tmp_path):
    code = PREQUANT.replace("    serialize(model)", '    log(f"done {", ".join(names)}")\n    serialize(model)')
    assert hits(lint(tmp_path, code), "lint.prequant_ttt") == [(WARN, 7), (WARN, 11)]


def test_empty_file_is_clean(tmp_path):
    assert lint(tmp_path, b"") == []


def test_non_utf8_file_is_still_scanned(tmp_path):
    findings = lint(tmp_path, "x = 'caf\xe9'\nimport socket\n".encode("latin-1"))
    assert [(f.code, f.evidence[0].line) for f in findings] == [("lint.network", 2)]


def test_binary_file_gets_one_unparsed_warning(tmp_path):
    findings = lint(tmp_path, b"\x00\x01\xff val_tokens.backward()\n\x00")
    assert [(f.code, f.status, f.evidence[0].line) for f in findings] == [("lint.unparsed", WARN, 1)]
    assert "NUL" in findings[0].message


def test_syntax_error_falls_back_to_line_regexes(tmp_path):
    code = """
    def broken(ctx_hash, tgt, mask):
        key = (ctx_hash ^ (tgt * 36313)) & mask
        return key +
    import socket
    """
    findings = lint(tmp_path, code)
    assert hits(findings, "lint.ngram_mix") == [(WARN, 2)]
    assert "did not parse" in next(f.message for f in findings if f.code == "lint.ngram_mix")
    assert hits(findings, "lint.network") == [(WARN, 4)]
    assert hits(findings, "lint.unparsed") == [(WARN, 3)]


def test_missing_file_is_reported_not_raised(tmp_path):
    findings = lint_files(tmp_path, [tmp_path / "helper.py"])
    assert [(f.code, f.status) for f in findings] == [("lint.unparsed", WARN)]


# --- val_in_training by data flow: the path a validation value takes ---------------------------

VAL_THROUGH_CONFIG_AND_GLOB = """
import glob
import os
class Hyperparameters:
    data_path = os.environ.get("DATA_PATH", "./data/datasets/fineweb10B_sp1024")
    train_files = os.path.join(data_path, "fineweb_train_*.bin")
    val_files = os.path.join(data_path, "fineweb_val_*.bin")
def main():
    args = Hyperparameters()
    extra = sorted(glob.glob(args.val_files))
    files = sorted(glob.glob(args.train_files))
    files += extra[:2]
    train_loader = DistributedTokenLoader(files, 0, 1)
"""

VAL_THROUGH_FSTRING_APPEND_AND_ARGUMENT = """
import glob
def make_stream(patterns, rank):
    return TokenStream(patterns, rank)
def main(args):
    shards = []
    for path in glob.glob(f"{args.data_path}/fineweb_val_*.bin"):
        shards.append(path)
    train_stream = make_stream(shards, 0)
"""

VAL_INTO_OPTIMISER = """
def fit(val_tokens):
    delta = val_tokens[:64].float().requires_grad_()
    opt = torch.optim.Adam([delta], lr=0.1)
"""

# Look-alikes: the same names and calls, but validation data only goes to evaluation, a val_*
# variable never reaches training, and a name that held val shards is rebound before the loader.
VAL_FLOW_LOOKALIKES = """
import glob
import os
class Hyperparameters:
    data_path = os.environ.get("DATA_PATH", "./data/datasets/fineweb10B_sp1024")
    train_files = os.path.join(data_path, "fineweb_train_*.bin")
    val_files = os.path.join(data_path, "fineweb_val_*.bin")
def make_stream(patterns, rank):
    return TokenStream(patterns, rank)
def main():
    args = Hyperparameters()
    val_shards = sorted(glob.glob(args.val_files))
    print(f"{len(val_shards)} validation shards")
    val_loader = DistributedTokenLoader(args.val_files, 0, 1)
    eval_stream = make_stream(val_shards, 0)
    files = sorted(glob.glob(args.val_files))
    files = sorted(glob.glob(args.train_files))
    train_loader = DistributedTokenLoader(files, 0, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
"""


def flow_messages(findings):
    return [(f.evidence[0].line, f.message) for f in findings if f.code == "lint.val_in_training"]


def test_val_through_config_attribute_glob_and_augmented_list_reaches_the_loader(tmp_path):
    [(line, message)] = flow_messages(lint(tmp_path, VAL_THROUGH_CONFIG_AND_GLOB))
    assert line == 12
    assert "'fineweb_val_*.bin' → join → val_files → args.val_files → glob → sorted → extra → files → " \
           "DistributedTokenLoader" in message


def test_val_through_fstring_append_and_a_function_argument_reaches_the_stream(tmp_path):
    [(line, message)] = flow_messages(lint(tmp_path, VAL_THROUGH_FSTRING_APPEND_AND_ARGUMENT))
    assert line == 3
    assert "glob → path → shards.append → shards → train_stream = make_stream(patterns) → TokenStream" in message


def test_val_into_an_optimiser(tmp_path):
    [(line, message)] = flow_messages(lint(tmp_path, VAL_INTO_OPTIMISER))
    assert line == 3 and "`Adam()`, an optimiser: val_tokens → float → requires_grad_ → delta → Adam" in message


def test_val_flow_lookalikes_are_clean(tmp_path):
    assert lint(tmp_path, VAL_FLOW_LOOKALIKES) == []


def test_val_flow_is_followed_inside_an_exec_wrapper(tmp_path):
    packed = base64.b85encode(lzma.compress(textwrap.dedent(VAL_THROUGH_CONFIG_AND_GLOB).lstrip("\n").encode()))
    wrapped = f'import lzma as L,base64 as B\nexec(L.decompress(B.b85decode("{packed.decode()}")))\n'
    [(line, message)] = flow_messages(lint(tmp_path, wrapped))
    assert line == 2 and "line 12 of the code this file's exec wrapper unpacks" in message
