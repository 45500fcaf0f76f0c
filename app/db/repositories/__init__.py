"""Every query of the service, one module per aggregate. Repositories add, find and change rows; they never commit.

tenancy: a session's tenant and the Repository base that keeps every query within it; tasks: tasks and their prompt
versions; datasets; evaluations: versions' scores on evaluation sets; jobs: the job queue; access: API keys and
the audit log (service-wide).
"""

from app.db.repositories.access import ApiKeyRepository, AuditRepository
from app.db.repositories.datasets import DatasetRepository
from app.db.repositories.evaluations import EvaluationRepository
from app.db.repositories.jobs import ACTIVE_STATUSES, JobRepository
from app.db.repositories.tasks import PromptRepository, TaskRepository
from app.db.repositories.tenancy import TENANT, Repository, scope_session, session_tenant

__all__ = [
    "ACTIVE_STATUSES",
    "TENANT",
    "ApiKeyRepository",
    "AuditRepository",
    "DatasetRepository",
    "EvaluationRepository",
    "JobRepository",
    "PromptRepository",
    "Repository",
    "TaskRepository",
    "scope_session",
    "session_tenant",
]
