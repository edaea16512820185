"""The life of a submission, as plain functions over a `Context` (`context`): accept it
(`accept`, `queue_message`), move it along its cascade (`advance`), run an analyzer stage
(`analyze`), decide (`finalize`), and find what the broker lost (`reconcile`).

Invariants:
- A submission row is committed before its task is published (publish after commit).
- Each task delivery counts an attempt in the database first; past the attempt budget the item
  is dead-lettered and fails closed to human review (a poison image is never retried forever).
- A decision is inserted with a unique key per submission, so a redelivered or duplicated
  message is a no-op: exactly one automated decision per submission.
- Analyzer failures fail closed (review), never allow.

Celery tasks in `workers/` are thin shims over these functions; so are the API's handlers.
"""
