"""The documented fields of the custom resources the charts render, as JSON schemas.

ScaledObject: KEDA 2.x (keda.sh/v1alpha1; https://keda.sh/docs/latest/reference/scaledobject-spec/
and the prometheus and nats-jetstream scalers' pages). ServiceMonitor and PrometheusRule: the
Prometheus operator's API reference (monitoring.coreos.com/v1). Unknown fields are errors, as the
API server's structural schemas make them.
"""
from __future__ import annotations

STR = {"type": "string"}
INT = {"type": "integer"}
BOOL = {"type": "boolean"}
STRMAP = {"type": "object", "additionalProperties": STR}


def obj(props: dict, required: tuple = (), extra: bool = False) -> dict:
    return {"type": "object", "properties": props, "required": list(required), "additionalProperties": extra}


METADATA = obj({"name": STR, "namespace": STR, "labels": STRMAP, "annotations": STRMAP}, ("name",))


def resource(api: str, kind: str, spec: dict) -> dict:
    return obj({"apiVersion": {"const": api}, "kind": {"const": kind}, "metadata": METADATA, "spec": spec},
               ("apiVersion", "kind", "metadata", "spec"))


# trigger type -> (required metadata keys, optional metadata keys)
KEDA_TRIGGERS = {
    "prometheus": ({"serverAddress", "query", "threshold"},
                   {"activationThreshold", "namespace", "customHeaders", "ignoreNullValues", "unsafeSsl",
                    "queryParameters", "authModes"}),
    "nats-jetstream": ({"natsServerMonitoringEndpoint", "account", "stream", "consumer"},
                       {"lagThreshold", "activationLagThreshold", "useHttps"}),
}

_trigger = obj({
    "type": {"enum": sorted(KEDA_TRIGGERS)},
    "name": STR,
    "metadata": STRMAP,
    "authenticationRef": obj({"name": STR, "kind": STR}, ("name",)),
    "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
    "useCachedMetrics": BOOL,
}, ("type", "metadata"))

SCALED_OBJECT = resource("keda.sh/v1alpha1", "ScaledObject", obj({
    "scaleTargetRef": obj({"apiVersion": STR, "kind": STR, "name": STR, "envSourceContainerName": STR}, ("name",)),
    "pollingInterval": INT,
    "cooldownPeriod": INT,
    "initialCooldownPeriod": INT,
    "idleReplicaCount": INT,
    "minReplicaCount": INT,
    "maxReplicaCount": INT,
    "fallback": obj({"failureThreshold": INT, "replicas": INT, "behavior": STR}, ("failureThreshold", "replicas")),
    "advanced": {"type": "object"},
    "triggers": {"type": "array", "minItems": 1, "items": _trigger},
}, ("scaleTargetRef", "triggers")))

_label_selector = obj({"matchLabels": STRMAP, "matchExpressions": {"type": "array"}})
_endpoint = obj({
    "port": STR, "targetPort": {"type": ["string", "integer"]}, "path": STR, "scheme": {"enum": ["http", "https"]},
    "interval": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
    "scrapeTimeout": STR, "honorLabels": BOOL, "honorTimestamps": BOOL, "params": {"type": "object"},
    "relabelings": {"type": "array"}, "metricRelabelings": {"type": "array"}, "tlsConfig": {"type": "object"},
    "bearerTokenSecret": {"type": "object"}, "authorization": {"type": "object"}, "basicAuth": {"type": "object"},
    "followRedirects": BOOL, "enableHttp2": BOOL, "filterRunning": BOOL,
})
SERVICE_MONITOR = resource("monitoring.coreos.com/v1", "ServiceMonitor", obj({
    "selector": _label_selector,
    "namespaceSelector": obj({"any": BOOL, "matchNames": {"type": "array", "items": STR}}),
    "endpoints": {"type": "array", "minItems": 1, "items": _endpoint},
    "jobLabel": STR, "targetLabels": {"type": "array", "items": STR},
    "podTargetLabels": {"type": "array", "items": STR}, "sampleLimit": INT, "targetLimit": INT,
    "attachMetadata": {"type": "object"}, "scrapeProtocols": {"type": "array"},
}, ("selector", "endpoints")))

_rule = {
    "type": "object",
    "properties": {"alert": STR, "record": STR, "expr": {"type": "string", "minLength": 1}, "for": STR,
                   "keep_firing_for": STR, "labels": STRMAP, "annotations": STRMAP},
    "required": ["expr"],
    "additionalProperties": False,
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
}
PROMETHEUS_RULE = resource("monitoring.coreos.com/v1", "PrometheusRule", obj({
    "groups": {"type": "array", "minItems": 1, "items": obj({
        "name": STR, "interval": STR, "limit": INT, "partial_response_strategy": STR,
        "rules": {"type": "array", "minItems": 1, "items": _rule}}, ("name", "rules"))},
}, ("groups",)))

SCHEMAS = {"ScaledObject": SCALED_OBJECT, "ServiceMonitor": SERVICE_MONITOR, "PrometheusRule": PROMETHEUS_RULE}
