"""aa-storage: shared state for agent-governance runtimes.

The core defines three store contracts (sessions, fixed-window rate limits and
policies), loads drivers through pluggy entry points, and builds the stores a
``[storage]`` table selects::

    from aa_storage import open_storage

    async with open_storage("agent-assembly.toml") as storage:
        total = await storage.rate_limiter.increment("agent:42", 1, window_secs=60)

With no argument (and no ``AA_STORAGE_CONFIG``), every store is the embedded
``memory`` driver. Errors are the classes in :mod:`aa_storage.errors`.
"""

from aa_storage._config import StorageConfig, load_config
from aa_storage._policy_json import policy_from_json, policy_to_json
from aa_storage._registry import ENTRY_POINT_GROUP, Registry
from aa_storage._storage import CONFIG_ENV_VAR, Storage, open_storage
from aa_storage._types import (
    AgentId,
    EnforcementMode,
    PolicyDecision,
    PolicyDocument,
    PolicyRule,
    SessionId,
    SessionRecord,
)
from aa_storage.contracts import (
    DEFAULT_POLICY_CACHE_TTL_SECS,
    SESSION_TTL_SECS,
    Backend,
    BackendInfo,
    Driver,
    Kind,
    PolicyBackend,
    PolicyCache,
    PolicyLoader,
    PolicyStore,
    RateLimitBackend,
    RateLimitCounter,
    SessionBackend,
    SessionStore,
)
from aa_storage.errors import (
    BackendError,
    ConfigError,
    ConflictError,
    DuplicateDriverError,
    InvalidConfigError,
    MissingKindError,
    NotFoundError,
    PluginError,
    SerializationError,
    StorageError,
    UnknownDriverError,
)

__all__ = [
    "CONFIG_ENV_VAR",
    "DEFAULT_POLICY_CACHE_TTL_SECS",
    "ENTRY_POINT_GROUP",
    "SESSION_TTL_SECS",
    "AgentId",
    "Backend",
    "BackendError",
    "BackendInfo",
    "ConfigError",
    "ConflictError",
    "Driver",
    "DuplicateDriverError",
    "EnforcementMode",
    "InvalidConfigError",
    "Kind",
    "MissingKindError",
    "NotFoundError",
    "PluginError",
    "PolicyBackend",
    "PolicyCache",
    "PolicyDecision",
    "PolicyDocument",
    "PolicyLoader",
    "PolicyRule",
    "PolicyStore",
    "RateLimitBackend",
    "RateLimitCounter",
    "Registry",
    "SerializationError",
    "SessionBackend",
    "SessionId",
    "SessionRecord",
    "SessionStore",
    "Storage",
    "StorageConfig",
    "StorageError",
    "UnknownDriverError",
    "load_config",
    "open_storage",
    "policy_from_json",
    "policy_to_json",
]
