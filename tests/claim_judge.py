"""A stand-in judge for unit tests of ingestion: it believes the agent's claim.

Ingestion's own checks (bundle, paths, modes, the commit it writes) are tested
without starting the judge's sandboxes; this stand-in turns the agent's claimed
constraints and test counts into a verdict, then settles it exactly as a real run
does. It exists for tests only: a real run's verdict comes from controller.judge.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from controller.verdict import Verdict, settle

if TYPE_CHECKING:
    from controller.ingest import Candidate


def claim_judge(candidate: Candidate) -> Verdict:
    """The verdict the agent claimed, settled with an exit status of 0 and no failing checks event."""
    agent = candidate.agent
    failed = [c for c in agent.constraints if not c.passed] or agent.test_results.failed
    verdict = Verdict(
        status="failed" if failed else "succeeded",
        reason="the claimed checks failed" if failed else None,
        test_results=agent.test_results,
        constraints=agent.constraints,
    )
    return settle(verdict, agent=agent, agent_exit_code=0, agent_last_checks_failed=False)
