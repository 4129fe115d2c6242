"""The Delphi half of benchmarks/autointerp_delphi.py; runs in a separate venv that has eai-delphi.

    /tmp/delphi-venv/bin/python benchmarks/delphi_child.py CASES.json OUT.json \\
        --base-url http://127.0.0.1:PORT/v1 --model smollm2-135m-instruct

Reads the cases the parent wrote (per case: an explanation; windows as token texts with their
activations; for fuzzing, each activating window's correct and wrong highlight masks) and scores
every case with Delphi's own ``DetectionScorer`` and ``FuzzingScorer`` (``log_prob=True``, so each
answer carries Delphi's P("1") from the top-5 logprobs of its answer tokens), through a small
:class:`ServeLLMClient` that posts Delphi's chat prompts to an OpenAI-compatible
``/chat/completions`` (``mechscope serve-llm``). Writes per-window outputs (Delphi's
``ClassifierOutput`` fields) and Delphi's own per-case metrics (``delphi.log.result_analysis``)
to OUT.json; prints progress to stderr.

What is Delphi's and what is not: prompts, example rendering (``<<``/``>>`` highlighting), answer
parsing, logprob-to-probability reduction, batching into prompts and the metrics are Delphi's
code. Two things are set here: the client (Delphi 0.1.3 ships only ``OpenRouter``, which never
asks for logprobs, and ``Offline``, which runs vLLM in-process), and, for fuzzing, which tokens the
wrong examples highlight: the parent's masks (mechscope's draw), given to Delphi's own
``_highlight``, so both libraries judge the very same marked texts. ``--native-fuzz`` lets Delphi
draw them itself instead (its ``fuzz_type="active"``: the activating windows with
ceil(mean firing count) random silent tokens marked).

Delphi 0.1.3 imports vLLM at import time (``delphi.clients`` imports its ``Offline`` client) and
requires ``vllm>=0.10.2``, which pins its own CUDA torch; the scorers never call it, so an empty
stand-in module is registered before the import when vLLM is absent (:func:`_stub_vllm`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import types
from dataclasses import dataclass, field


def _stub_vllm() -> bool:
    """Register empty ``vllm`` modules (the names ``delphi.clients.offline`` imports) when vLLM is
    not installed. Returns whether a stand-in was registered."""
    try:
        import vllm  # noqa: F401
        return False
    except ImportError:
        pass

    def refuse(*args, **kwargs):
        raise RuntimeError("vLLM is not installed in this venv (a stand-in module); Delphi's Offline client "
                           "cannot run here")

    names = {"vllm": ("LLM", "SamplingParams"), "vllm.distributed": (),
             "vllm.distributed.parallel_state": ("destroy_distributed_environment", "destroy_model_parallel"),
             "vllm.inputs": ("TokensPrompt",)}
    for name, attributes in names.items():
        module = types.ModuleType(name)
        module.__path__ = []  # a package, so its submodules import
        for attribute in attributes:
            setattr(module, attribute, refuse)
        sys.modules[name] = module
    return True


@dataclass
class TopLogprob:
    """One alternative at a generated position, in the shape Delphi's classifier reads."""

    token: str
    logprob: float


@dataclass
class TokenLogprob:
    """One generated token and its alternatives (``.token``, ``.top_logprobs``), as Delphi reads them."""

    token: str
    top_logprobs: list[TopLogprob] = field(default_factory=list)


def make_client(base_url: str, model: str, max_tokens: int, concurrency: int, timeout: float):
    """A Delphi ``Client`` that posts to ``{base_url}/chat/completions``, asking for logprobs when
    Delphi's scorer does (``logprobs``/``top_logprobs`` in its generation kwargs)."""
    import httpx
    from delphi.clients.client import Client, Response

    class ServeLLMClient(Client):
        def __init__(self):
            super().__init__(model)
            self.url = base_url.rstrip("/") + "/chat/completions"
            limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
            self.http = httpx.AsyncClient(timeout=timeout, limits=limits)
            self.gate = asyncio.Semaphore(concurrency)
            self.requests = self.prompt_tokens = self.completion_tokens = 0
            self.answers: list[str] = []

        async def generate(self, prompt, **kwargs) -> Response:  # type: ignore[override]
            payload = {"model": self.model, "messages": prompt,
                       "max_tokens": int(kwargs.get("max_tokens", max_tokens)),
                       "temperature": float(kwargs.get("temperature", 0.0))}
            if kwargs.get("logprobs"):
                payload["logprobs"] = True
                payload["top_logprobs"] = int(kwargs.get("top_logprobs", 5))
            async with self.gate:
                answer = await self.http.post(self.url, json=payload)
            answer.raise_for_status()
            data = answer.json()
            choice = data["choices"][0]
            usage = data.get("usage") or {}
            self.requests += 1
            self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self.completion_tokens += int(usage.get("completion_tokens") or 0)
            self.answers.append(choice["message"]["content"] or "")
            content = (choice.get("logprobs") or {}).get("content")
            logprobs = None if content is None else [
                TokenLogprob(entry["token"], [TopLogprob(top["token"], top["logprob"])
                                              for top in entry.get("top_logprobs") or []])
                for entry in content]
            return Response(text=choice["message"]["content"] or "", logprobs=logprobs)

        async def close(self):
            await self.http.aclose()

    return ServeLLMClient()


def records(case: dict):
    """Delphi's ``LatentRecord`` of one case: the activating windows as ``test`` examples, the
    silent ones as ``not_active``; each example's ``quantile``/``distance`` holds its window index
    so answers map back to windows."""
    import torch
    from delphi.latents import ActivatingExample, Latent, LatentRecord, NonActivatingExample

    test, silent = [], []
    for index, window in enumerate(case["windows"]):
        activations = torch.tensor(window["activations"], dtype=torch.float32)
        tokens = torch.zeros(len(activations), dtype=torch.long)  # the scorers read str_tokens only
        if window["fires"]:
            test.append(ActivatingExample(tokens=tokens, activations=activations, str_tokens=window["tokens"],
                                          quantile=index))
        else:
            silent.append(NonActivatingExample(tokens=tokens, activations=activations,
                                               str_tokens=window["tokens"], distance=float(index)))
    return LatentRecord(latent=Latent("planted", case["id"]), examples=test, not_active=silent, test=test,
                        explanation=case["explanation"])


def make_scorers(client, examples_per_prompt: int, native_fuzz: bool, case_masks: dict):
    """Delphi's detection scorer, and its fuzzing scorer whose examples are the parent's masks
    (``case_masks[case id]``) rendered by Delphi's own ``_highlight``, unless ``native_fuzz``."""
    from delphi.scorers import DetectionScorer, FuzzingScorer
    from delphi.scorers.classifier.sample import ClassifierOutput, Sample, _highlight

    class SharedMaskFuzzing(FuzzingScorer):
        def _prepare(self, record):
            samples = []
            for item in case_masks[record.latent.latent_index]:
                tokens, mask = item["tokens"], item["mask"]
                data = ClassifierOutput(str_tokens=tokens, activations=item["activations"],
                                        distance=item["window"], activating=item["correct"])
                samples.append(Sample(text=_highlight(tokens, lambda i, mask=mask: bool(mask[i])), data=data))
            return samples

    detection = DetectionScorer(client, n_examples_shown=examples_per_prompt, log_prob=True, temperature=0.0)
    fuzz_class = FuzzingScorer if native_fuzz else SharedMaskFuzzing
    fuzzing = fuzz_class(client, n_examples_shown=examples_per_prompt, log_prob=True, temperature=0.0,
                         fuzz_type="active")
    return detection, fuzzing


def delphi_metrics(outputs: list[dict]) -> dict:
    """Delphi's own per-latent numbers (``delphi.log.result_analysis``): its "accuracy" (balanced
    accuracy over parsed answers), F1, and AUC of its probabilities; None where undefined."""
    import pandas as pd
    from delphi.log.result_analysis import compute_auc, compute_classification_metrics, compute_confusion

    frame = pd.DataFrame(outputs)
    metrics = compute_classification_metrics(compute_confusion(frame))
    try:
        auc = compute_auc(frame)
    except ValueError:  # one class only among the answers with a probability
        auc = None
    return {"accuracy": float(metrics["accuracy"]), "f1": float(metrics["f1_score"]),
            "auc": None if auc is None else float(auc), "parsed": int(frame.prediction.notna().sum()),
            "n": len(frame)}


async def score_all(cases: list[dict], client, scorers, cases_at_once: int) -> list[dict]:
    """Every case through both scorers, ``cases_at_once`` cases at a time (each case's two scorers
    concurrently, as Delphi's ``Pipe`` runs them); progress on stderr."""
    detection, fuzzing = scorers
    gate = asyncio.Semaphore(cases_at_once)
    done = 0

    async def one(case):
        nonlocal done
        record = records(case)
        async with gate:
            results = await asyncio.gather(detection(record), fuzzing(record))
        done += 1
        print(f"delphi: {done}/{len(cases)} cases scored", file=sys.stderr, flush=True)
        row = {"id": case["id"]}
        for name, result in zip(("detection", "fuzzing"), results):
            outputs = [{"window": int(o.distance), "activating": bool(o.activating),
                        "prediction": o.prediction, "probability": o.probability, "correct": o.correct}
                       for o in result.score]
            row[name] = {"outputs": outputs, "delphi": delphi_metrics(outputs)}
        return row

    return await asyncio.gather(*(one(case) for case in cases))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases")
    parser.add_argument("out")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--examples-per-prompt", type=int, default=5,
                        help="Delphi's n_examples_shown (its CLI's default 5, as its few-shot prompts show)")
    parser.add_argument("--max-tokens", type=int,
                        help="answer budget per request (default 2 per example + 6)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight at once")
    parser.add_argument("--cases-at-once", type=int, default=4, help="cases scored concurrently")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--native-fuzz", action="store_true",
                        help="let Delphi pick the wrongly highlighted tokens (fuzz_type='active')")
    args = parser.parse_args()

    start = time.perf_counter()
    stubbed = _stub_vllm()
    import delphi
    import delphi.log.result_analysis  # noqa: F401  (imported here so the timed part is scoring alone)
    import delphi.scorers  # noqa: F401
    import pandas  # noqa: F401

    max_tokens = args.max_tokens or 2 * args.examples_per_prompt + 6

    with open(args.cases) as handle:
        cases = json.load(handle)["cases"]
    masks = {case["id"]: case["fuzzing"] for case in cases}
    import_seconds = time.perf_counter() - start

    async def run():
        client = make_client(args.base_url, args.model, max_tokens, args.concurrency, args.timeout)
        scorers = make_scorers(client, args.examples_per_prompt, args.native_fuzz, masks)
        began = time.perf_counter()
        rows = await score_all(cases, client, scorers, args.cases_at_once)
        seconds = time.perf_counter() - began
        await client.close()
        usage = {"requests": client.requests, "prompt_tokens": client.prompt_tokens,
                 "completion_tokens": client.completion_tokens, "answers": client.answers}
        return rows, seconds, usage

    rows, seconds, usage = asyncio.run(run())
    result = {"version": getattr(delphi, "__version__", "?"), "vllm_stub": stubbed,
              "import_seconds": import_seconds, "seconds": seconds, "usage": usage,
              "examples_per_prompt": args.examples_per_prompt, "native_fuzz": args.native_fuzz, "cases": rows}
    with open(args.out, "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main()
