"""The daemon's OpenAPI document, served at /openapi.json."""

from __future__ import annotations

from aeguard import __version__

_ERROR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_SCORED = {
    "description": "scores",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ScoreResponse"}}},
}
_NAME = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]


def _errors(*codes: int) -> dict:
    return {str(code): _ERROR for code in codes}


def openapi_document() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "aeguard scoring daemon",
            "version": __version__,
            "description": "Anomaly scores from an autoencoder bundle. Scores above the threshold are anomalous.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
                        },
                        "request_id": {"type": "string"},
                    },
                },
                "ScoreRequest": {
                    "type": "object",
                    "properties": {
                        "images": {
                            "type": "array",
                            "maxItems": 256,
                            "items": {
                                "oneOf": [
                                    {"type": "string", "description": "base64 PNG / JPEG / ... (data URLs accepted)"},
                                    {
                                        "type": "array",
                                        "description": "pixels in [0, 1], shape [C, H, W] or [H, W, C] ([H, W]: grey)",
                                    },
                                ]
                            },
                        },
                        "image": {"description": "a single image, as one item of images"},
                        "maps": {"type": "boolean", "description": "add each image's anomaly map to its result"},
                    },
                },
                "ScoreResponse": {
                    "type": "object",
                    "properties": {
                        "model": {
                            "type": "object",
                            "properties": {"name": {"type": "string"}, "version": {"type": "string"}},
                        },
                        "threshold": {"type": "number"},
                        "results": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "score": {"type": "number"},
                                    "is_anomaly": {"type": "boolean"},
                                    "error": {"type": "string", "description": "why this item was not scored"},
                                    "filename": {"type": "string"},
                                    "anomaly_map": {
                                        "type": "object",
                                        "description": "when asked for: shape [H, W], FP32 little-endian, base64",
                                        "properties": {
                                            "shape": {"type": "array", "items": {"type": "integer"}},
                                            "datatype": {"type": "string"},
                                            "data": {"type": "string"},
                                        },
                                    },
                                },
                            },
                        },
                        "n_scored": {"type": "integer"},
                        "n_errors": {"type": "integer"},
                    },
                },
                "InferTensor": {
                    "type": "object",
                    "required": ["name", "shape", "datatype", "data"],
                    "properties": {
                        "name": {"type": "string"},
                        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                        "datatype": {"type": "string", "enum": ["FP32", "UINT8"]},
                        "parameters": {
                            "type": "object",
                            "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
                        },
                        "data": {"type": "array", "description": "flat or nested numbers: FP32 in [0, 1], UINT8 0-255"},
                    },
                },
                "InferRequest": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/InferTensor"}},
                        "parameters": {"type": "object", "properties": {"binary_data_output": {"type": "boolean"}}},
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string", "enum": ["score", "is_anomaly", "anomaly_map"]},
                                    "parameters": {
                                        "type": "object",
                                        "properties": {"binary_data": {"type": "boolean"}},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
        "paths": {
            "/v1/score": {
                "post": {
                    "summary": "Score images sent as base64 or nested arrays",
                    "security": [{"bearer": []}],
                    "requestBody": {
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ScoreRequest"}}}
                    },
                    "responses": {"200": _SCORED, **_errors(400, 401, 408, 413, 503, 504)},
                }
            },
            "/v1/score/image": {
                "post": {
                    "summary": "Score raw image bytes, or several files as multipart/form-data",
                    "security": [{"bearer": []}],
                    "parameters": [
                        {
                            "name": "maps",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "boolean"},
                            "description": "add each image's anomaly map to its result",
                        }
                    ],
                    "requestBody": {
                        "content": {"image/*": {}, "application/octet-stream": {}, "multipart/form-data": {}}
                    },
                    "responses": {"200": _SCORED, **_errors(400, 401, 408, 413, 503, 504)},
                }
            },
            "/v2": {
                "get": {
                    "summary": "Server metadata (Open Inference Protocol v2)",
                    "responses": {"200": {"description": "metadata"}},
                }
            },
            "/v2/health/live": {
                "get": {"summary": "Liveness", "responses": {"200": {"description": "the process is up"}}}
            },
            "/v2/health/ready": {
                "get": {
                    "summary": "Readiness",
                    "responses": {
                        "200": {"description": "a model is loaded and the daemon is not draining"},
                        "503": {"description": "not ready"},
                    },
                }
            },
            "/v2/models/{name}": {
                "get": {
                    "summary": "Model metadata",
                    "parameters": _NAME,
                    "responses": {"200": {"description": "metadata"}, **_errors(404, 503)},
                }
            },
            "/v2/models/{name}/ready": {
                "get": {
                    "summary": "Model readiness",
                    "parameters": _NAME,
                    "responses": {"200": {"description": "ready"}, **_errors(404, 503)},
                }
            },
            "/v2/models/{name}/infer": {
                "post": {
                    "summary": "Inference (Open Inference Protocol v2): outputs score (FP32) and is_anomaly (BOOL); "
                    "anomaly_map (FP32 [N, H, W]) when named in outputs",
                    "parameters": _NAME,
                    "security": [{"bearer": []}],
                    "requestBody": {
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}}}
                    },
                    "responses": {"200": {"description": "outputs"}, **_errors(400, 401, 404, 408, 413, 422, 503, 504)},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text exposition format"}},
                }
            },
            "/admin/reload": {
                "post": {
                    "summary": "Reload the bundle from disk (admin token)",
                    "security": [{"bearer": []}],
                    "responses": {
                        "200": {"description": "reloaded"},
                        "422": {"description": "new bundle refused; the old one keeps serving"},
                        **_errors(401, 404),
                    },
                }
            },
        },
    }
