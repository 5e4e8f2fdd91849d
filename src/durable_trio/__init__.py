"""durable_trio: durable workflows for trio, with all state in PostgreSQL.

A task is ordinary async Python; every ``ctx.step`` result is checkpointed, so after a
crash, a deploy or a lease expiry another worker resumes the task where it stopped.
"""

from ._client import Durable as Durable
from ._client import SpawnResult as SpawnResult
from ._client import TaskInfo as TaskInfo
from ._context import TaskContext as TaskContext
from ._context import TaskHandle as TaskHandle
from ._core.durations import MAX_DURATION as MAX_DURATION
from ._core.options import CancellationPolicy as CancellationPolicy
from ._core.options import SpawnOptions as SpawnOptions
from ._core.options import WorkerOptions as WorkerOptions
from ._core.report import PassReport as PassReport
from ._core.report import RunOutcome as RunOutcome
from ._core.report import RunReport as RunReport
from ._core.retry import RetryStrategy as RetryStrategy
from ._core.states import TaskState as TaskState
from ._errors import ChildCancelled as ChildCancelled
from ._errors import ChildFailed as ChildFailed
from ._errors import ConfigurationError as ConfigurationError
from ._errors import DatabaseUnavailable as DatabaseUnavailable
from ._errors import DurableError as DurableError
from ._errors import EventTimeout as EventTimeout
from ._errors import InvalidInput as InvalidInput
from ._errors import LeaseLost as LeaseLost
from ._errors import NeverIdle as NeverIdle
from ._errors import NonRetryable as NonRetryable
from ._errors import ReplayMismatch as ReplayMismatch
from ._errors import RetryRefused as RetryRefused
from ._errors import ScheduleNotFound as ScheduleNotFound
from ._errors import SerializationError as SerializationError
from ._errors import StepFailed as StepFailed
from ._errors import TaskCancelled as TaskCancelled
from ._errors import TaskError as TaskError
from ._errors import TaskFailed as TaskFailed
from ._errors import TaskNotFound as TaskNotFound
from ._errors import UnknownTask as UnknownTask
from ._errors import WaitTimeout as WaitTimeout
from ._errors import WorkerFailed as WorkerFailed
from ._fleet import UnservedTasks as UnservedTasks
from ._fleet import WorkerInfo as WorkerInfo
from ._hooks import CancelCall as CancelCall
from ._hooks import EmitCall as EmitCall
from ._hooks import Hooks as Hooks
from ._hooks import SpawnCall as SpawnCall
from ._hooks import StepCall as StepCall
from ._inspect import ChildSummary as ChildSummary
from ._inspect import NameStats as NameStats
from ._inspect import QueueStats as QueueStats
from ._inspect import RetryResult as RetryResult
from ._inspect import RunError as RunError
from ._inspect import RunInfo as RunInfo
from ._inspect import StepInfo as StepInfo
from ._inspect import TaskPage as TaskPage
from ._inspect import TaskSummary as TaskSummary
from ._inspect import WaitingFor as WaitingFor
from ._inspect import WaitingForChild as WaitingForChild
from ._inspect import WaitingForEvent as WaitingForEvent
from ._inspect import WaitingForTime as WaitingForTime
from ._retention import CleanupResult as CleanupResult
from ._schedules import ScheduleInfo as ScheduleInfo
from ._task import Task as Task
from ._task import TaskDefinition as TaskDefinition
from ._task import task as task
from ._worker import Worker as Worker

__version__ = "0.1.0"
