"""monolake.conf: the TOML config schema, its validation, and the embedded default config.

See docs/configuration.md for the keys and docs/contracts.md for this API.
"""

from __future__ import annotations

from .errors import ConfigError
from .loader import default_config_text, load_config, parse_config
from .resolver import ResolverConfig
from .routes import Router, RouteSpec
from .schema import (
    DEFAULT_SOURCE,
    AdminConfig,
    CertificateConfig,
    Config,
    EndpointConfig,
    LayerConfig,
    ListenerConfig,
    RouteConfig,
    RuntimeConfig,
    ServerConfig,
    SupervisorConfig,
    TimeoutConfig,
    TlsConfig,
    UpstreamConfig,
    default_control_socket,
)

__all__ = [
    "AdminConfig",
    "CertificateConfig",
    "Config",
    "ConfigError",
    "DEFAULT_SOURCE",
    "EndpointConfig",
    "LayerConfig",
    "ListenerConfig",
    "ResolverConfig",
    "RouteConfig",
    "RouteSpec",
    "Router",
    "RuntimeConfig",
    "ServerConfig",
    "SupervisorConfig",
    "TimeoutConfig",
    "TlsConfig",
    "UpstreamConfig",
    "default_config_text",
    "default_control_socket",
    "load_config",
    "parse_config",
]
