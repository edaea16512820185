"""The named vocabulary: statuses, actions and priorities, as stored in the database and shown in
the API. `StrEnum` members are their string values, so rows, JSON and audit facts stay plain text
(existing rows and clients read the same words); code names them instead of spelling strings."""

from __future__ import annotations

from enum import StrEnum


class SubmissionStatus(StrEnum):
    """received -> queued -> analyzing -> decided | in_review -> reviewed; rejected at intake."""

    QUEUED = "queued"
    ANALYZING = "analyzing"
    DECIDED = "decided"
    IN_REVIEW = "in_review"
    REVIEWED = "reviewed"
    REJECTED = "rejected"


#: Statuses of a submission that the pipeline still has to move (the reconciler's concern).
ACTIVE = (SubmissionStatus.QUEUED, SubmissionStatus.ANALYZING)
#: Statuses after which a client stops polling.
FINAL = (SubmissionStatus.DECIDED, SubmissionStatus.IN_REVIEW, SubmissionStatus.REVIEWED, SubmissionStatus.REJECTED)


class Action(StrEnum):
    """What a decision does, from least to most severe (`severity`)."""

    ALLOW = "allow"
    RESTRICT = "restrict"
    REVIEW = "review"
    BLOCK = "block"
    ESCALATE = "escalate"

    @property
    def severity(self) -> int:
        return list(Action).index(self)

    @property
    def needs_people(self) -> bool:
        """A human decides next (a review task is opened)."""
        return self in (Action.REVIEW, Action.ESCALATE)


class ReviewStatus(StrEnum):
    """A review task: open (claimable; also a claimed one whose lease ran out), claimed, done."""

    OPEN = "open"
    CLAIMED = "claimed"
    DONE = "done"


class TaskKind(StrEnum):
    """Why a person looks: the machine was unsure, a QA sample, an appeal, an escalation."""

    REVIEW = "review"
    QA = "qa"
    APPEAL = "appeal"
    ESCALATION = "escalation"


class AppealOutcome(StrEnum):
    UPHELD = "upheld"
    REVERSED = "reversed"
    MODIFIED = "modified"


class CallbackStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class Priority(StrEnum):
    """A submission's priority: one vocabulary for the API, the broker and the review queue."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def broker(self) -> int:
        """The Celery message priority on Redis (lower runs first on kombu's priority steps)."""
        return {"high": 0, "normal": 3, "low": 6}[self.value]

    @property
    def amqp(self) -> int:
        """The message priority on RabbitMQ (priority queues: higher is delivered first)."""
        return {"high": 9, "normal": 5, "low": 1}[self.value]

    @property
    def review_rank(self) -> int:
        """The review task's priority (lower is served first)."""
        return {"high": 1, "normal": 5, "low": 9}[self.value]

    @classmethod
    def of(cls, value: str | None) -> Priority:
        """The priority named by a stored or queued value; unknown or missing ones are normal."""
        try:
            return cls(value or "normal")
        except ValueError:
            return cls.NORMAL
