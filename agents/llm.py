"""The LLM specialist (`arx agent --policy llm`): any OpenAI-compatible chat completions endpoint.

OPENAI_BASE_URL and OPENAI_API_KEY pick the endpoint (OpenAI, vLLM, Ollama, llama.cpp, ...), --model
the model. Each proposal sends the task brief, the surface's files and the lineage view, asks for a
JSON answer (structured output where the server supports it), checks and applies the edit locally,
and feeds a failed parse or apply back to the model a bounded number of times; an answer that stays
invalid becomes a trial labelled invalid_edit with the reason. A failing endpoint (timeouts, 429, 5xx,
garbage) is retried with backoff, never fatal. Tokens, latency and cost go into TrialProposed, and a
campaign whose trials have cost ARX_COST_CAP_USD gets no more proposals.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass

import anyio
import openai

from agents import llm_prompt
from agents.arms import arm_of, view_arm
from agents.base import Context, Proposal, Specialist, Spent
from agents.lineage_view import ViewLimits, build_view
from agents.llm_edits import ANSWER_SCHEMA, AnswerError, EditRules, apply_answer, parse_answer
from bus.settings import Settings
from projections import reads

log = logging.getLogger("arx.agent.llm")

RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "trial", "schema": ANSWER_SCHEMA, "strict": True}}
# Worth another attempt: the endpoint may answer properly next time.
TRANSIENT = (
    openai.APIConnectionError,  # includes timeouts
    openai.RateLimitError,
    openai.InternalServerError,
    openai.APIResponseValidationError,
    json.JSONDecodeError,  # a reply body that is not JSON
)
MAX_BACKOFF_S = 300.0


class EndpointError(Exception):
    """The endpoint gave no usable reply within the bounded retries."""


@dataclass(frozen=True)
class Reply:
    content: str | None
    finish_reason: str | None


@dataclass
class Usage:
    """What one proposal's calls used, summed over its repair rounds."""

    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0

    def add(self, response) -> None:
        usage = getattr(response, "usage", None)
        self.tokens_in += _count(getattr(usage, "prompt_tokens", 0))
        self.tokens_out += _count(getattr(usage, "completion_tokens", 0))

    def cost(self, settings: Settings, model: str) -> float:
        price_in, price_out = settings.llm_prices.get(model, (0.0, 0.0))
        return (self.tokens_in * price_in + self.tokens_out * price_out) / 1e6


def _count(value) -> int:
    return value if isinstance(value, int) and value > 0 else 0


def api_key() -> str:
    """OPENAI_API_KEY; a local server (OPENAI_BASE_URL) may have none."""
    key = os.environ.get("OPENAI_API_KEY")
    if not key and not os.environ.get("OPENAI_BASE_URL"):
        raise ValueError("the llm policy needs OPENAI_API_KEY, or OPENAI_BASE_URL for a server without keys")
    return key or "unused"


def make_client(settings: Settings) -> openai.AsyncOpenAI:
    """A client for OPENAI_BASE_URL (the openai package reads it), OpenAI's own API without it."""
    return openai.AsyncOpenAI(api_key=api_key(), timeout=settings.llm_timeout_s, max_retries=settings.llm_max_retries)


def _reply(response) -> Reply | None:
    """The first choice of a chat completion; None when the body is not one."""
    try:
        choice = response.choices[0]
        return Reply(choice.message.content, choice.finish_reason)
    except (AttributeError, IndexError, KeyError, TypeError):
        return None


class LLMSpecialist(Specialist):
    policy = "llm"

    def __init__(
        self, *, model: str | None = None, no_lineage: bool = False, limits: ViewLimits = ViewLimits(), **kwargs
    ):
        super().__init__(**kwargs)
        if not model:
            raise ValueError("the llm policy needs --model (the name of a model the endpoint serves)")
        if self.settings.llm_attempts < 1 or self.settings.llm_repair_rounds < 0:
            raise ValueError("ARX_LLM_ATTEMPTS must be at least 1 and ARX_LLM_REPAIR_ROUNDS at least 0")
        self.model = model
        self.no_lineage = no_lineage
        self.limits = limits
        api_key()  # a missing endpoint configuration fails now, not at the first proposal
        self._client: openai.AsyncOpenAI | None = None
        self._structured = True  # until the endpoint refuses response_format
        self._retry_at = 0.0
        self._failed_rounds = 0
        self._capped = False

    async def run(self) -> str:
        self._client = make_client(self.settings)
        try:
            return await super().run()
        finally:
            with anyio.move_on_after(5, shield=True):
                await self._client.close()

    async def propose(self, context: Context) -> Proposal | Spent | None:
        if self._over_cost_cap(context) or time.monotonic() < self._retry_at:
            return None
        arm = "no-lineage" if self.no_lineage else view_arm(arm_of(context))
        view = build_view(context.lineage, context.campaign_id, self.specialist, arm=arm, limits=self.limits)
        rules = EditRules.for_task(context.task, self.surface, context.task.spec.paths_of(self.surface))
        conversation = llm_prompt.messages(context, view, rules)
        usage = Usage()
        tries = self.settings.llm_repair_rounds + 1
        hypothesis, error, answers = None, "", 0
        for number in range(1, tries + 1):
            try:
                reply = await self._complete(conversation, usage)
            except EndpointError as exc:
                if answers == 0:
                    self._back_off(exc)
                    return self._spent(usage, str(exc)) if usage.tokens_in or usage.tokens_out else None
                error += f"; then the endpoint failed: {exc}"
                break
            answers += 1
            try:
                answer = parse_answer(reply.content, reply.finish_reason)
                hypothesis = answer.hypothesis
                diff = apply_answer(answer, context.files, rules)
            except AnswerError as exc:
                error = str(exc)
                log.info("%s: answer %d of %d refused: %s", self.specialist, number, tries, error)
                conversation += llm_prompt.feedback(reply.content, error, tries - number)
                continue
            return self._proposal(answer.hypothesis.strip(), diff, answer.expected_delta, view.shown_ids, usage)
        reason = f"no valid edit in {answers} {'answer' if answers == 1 else 'answers'}: {error}"
        return self._proposal(hypothesis or "(no valid answer)", "", None, view.shown_ids, usage, rejection=reason)

    def _spent(self, usage: Usage, reason: str) -> Spent:
        return Spent(model=self.model, tokens_in=usage.tokens_in, tokens_out=usage.tokens_out,
                     cost_usd=usage.cost(self.settings, self.model), reason=reason)

    def _proposal(self, hypothesis, diff, expected_delta, shown_ids, usage: Usage, rejection=None) -> Proposal:
        return Proposal(
            hypothesis=hypothesis,
            diff=diff,
            expected_delta=expected_delta,
            shown_ids=shown_ids,
            model=self.model,
            tokens_in=usage.tokens_in,
            tokens_out=usage.tokens_out,
            latency_s=round(usage.latency_s, 3),
            cost_usd=usage.cost(self.settings, self.model),
            rejection=rejection,
        )

    def _over_cost_cap(self, context: Context) -> bool:
        cap = self.settings.cost_cap_usd
        if cap is None:
            return False
        spent = reads.campaign_cost(context.lineage, context.campaign_id)
        if spent < cap:
            return False
        if not self._capped:
            log.warning(
                "%s: campaign %s has cost $%.4f, its cost cap is $%.4f: no more proposals until it stops",
                self.specialist, context.campaign_id, spent, cap,
            )
            self._capped = True
        return True

    def _back_off(self, exc: EndpointError) -> None:
        """Wait longer after each proposal the endpoint failed, so a dead endpoint is not hammered."""
        doublings = self.settings.llm_attempts + self._failed_rounds  # carries on from _complete's backoff
        delay = min(self.settings.llm_backoff_s * 2**doublings, MAX_BACKOFF_S)
        self._failed_rounds += 1
        self._retry_at = time.monotonic() + delay
        log.warning("%s: %s; next try in %.1fs", self.specialist, exc, delay)

    async def _complete(self, conversation: list[dict], usage: Usage) -> Reply:
        """One model reply, with up to llm_attempts tries on transient failures, backoff doubling."""
        attempts = self.settings.llm_attempts
        for attempt in range(1, attempts + 1):
            start = time.monotonic()
            try:
                response = await self._create(conversation)
            except TRANSIENT as exc:
                problem = f"{type(exc).__name__}: {exc}"
            except openai.APIStatusError as exc:
                raise EndpointError(f"the endpoint refused the request: {exc}") from None
            else:
                usage.add(response)
                if (reply := _reply(response)) is not None:
                    self._failed_rounds = 0
                    return reply
                problem = "the reply is not a chat completion (no choices[0].message)"
            finally:
                usage.latency_s += time.monotonic() - start
            log.warning("%s: endpoint attempt %d of %d failed: %s", self.specialist, attempt, attempts, problem)
            if attempt < attempts:
                await anyio.sleep(self.settings.llm_backoff_s * 2 ** (attempt - 1))
        raise EndpointError(f"no usable reply in {attempts} attempts, the last: {problem}")

    async def _create(self, conversation: list[dict]):
        request = {"model": self.model, "messages": conversation}
        if self.settings.llm_max_tokens:
            request["max_tokens"] = self.settings.llm_max_tokens
        if self._structured:
            try:
                return await self._client.chat.completions.create(**request, response_format=RESPONSE_FORMAT)
            except openai.BadRequestError as exc:
                log.info("%s: the endpoint refused structured output (%s); asking for JSON in the text",
                         self.specialist, exc)
                self._structured = False
        return await self._client.chat.completions.create(**request)
