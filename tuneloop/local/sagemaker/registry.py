"""The model registry: model package groups and versioned packages, with approval events."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .common import Emit, arn, envelope, now, write_json
from .exceptions import ServiceError


class Registry:
    """Model package groups and versioned packages, saved to ``registry.json``."""

    def __init__(self, path: Path, emit: Emit) -> None:
        self.path = path
        self.emit = emit
        self.lock = threading.Lock()
        data = json.loads(path.read_text()) if path.is_file() else {}
        self.groups: dict[str, dict[str, Any]] = data.get("groups", {})
        self.packages: dict[str, dict[str, Any]] = data.get("packages", {})
        self.tokens: dict[str, str] = data.get("tokens", {})

    def _save(self) -> None:
        write_json(self.path, {"groups": self.groups, "packages": self.packages, "tokens": self.tokens})

    def _event(self, record: dict[str, Any]) -> None:
        detail = json.loads(json.dumps(record))
        self.emit(envelope("SageMaker Model Package State Change", record["ModelPackageArn"], detail))

    def create_group(self, params: Mapping[str, Any]) -> dict[str, Any]:
        name = params["ModelPackageGroupName"]
        group_arn = arn("model-package-group", name)
        with self.lock:
            if name in self.groups:
                raise ServiceError("ValidationException", f"Model Package Group already exists: {group_arn}")
            self.groups[name] = {
                "ModelPackageGroupName": name,
                "ModelPackageGroupArn": group_arn,
                "ModelPackageGroupDescription": params.get("ModelPackageGroupDescription", ""),
                "CreationTime": now().timestamp(),
                "ModelPackageGroupStatus": "Completed",
            }
            self._save()
        return {"ModelPackageGroupArn": group_arn}

    def create_package(self, params: Mapping[str, Any]) -> dict[str, Any]:
        group = params.get("ModelPackageGroupName")
        token = params.get("ClientToken")
        with self.lock:
            if token and token in self.tokens:
                return {"ModelPackageArn": self.tokens[token]}
            if group not in self.groups:
                raise ServiceError("ValidationException", f"Model Package Group {group} does not exist")
            version = 1 + sum(1 for p in self.packages.values() if p["ModelPackageGroupName"] == group)
            package_arn = arn("model-package", f"{group}/{version}")
            record = {
                **{k: v for k, v in params.items() if k not in ("ClientToken", "Tags")},
                "ModelPackageName": group,
                "ModelPackageArn": package_arn,
                "ModelPackageVersion": version,
                "ModelPackageStatus": "Completed",
                "ModelPackageStatusDetails": {"ValidationStatuses": []},
                "ModelApprovalStatus": params.get("ModelApprovalStatus", "PendingManualApproval"),
                "CreationTime": now().timestamp(),
            }
            self.packages[package_arn] = record
            if token:
                self.tokens[token] = package_arn
            self._save()
        self._event(record)
        return {"ModelPackageArn": package_arn}

    def describe(self, name: str) -> dict[str, Any]:
        record = self.packages.get(name)
        if record is None:
            raise ServiceError("ValidationException", f"Model package {name} does not exist")
        return dict(record)

    def update(self, params: Mapping[str, Any]) -> dict[str, Any]:
        package_arn = params["ModelPackageArn"]
        with self.lock:
            record = self.packages.get(package_arn)
            if record is None:
                raise ServiceError("ValidationException", f"Model package {package_arn} does not exist")
            changed = "ModelApprovalStatus" in params and params["ModelApprovalStatus"] != record["ModelApprovalStatus"]
            for key in ("ModelApprovalStatus", "ApprovalDescription", "CustomerMetadataProperties"):
                if key in params:
                    record[key] = params[key]
            record["LastModifiedTime"] = now().timestamp()
            self._save()
        if changed:
            self._event(record)
        return {"ModelPackageArn": package_arn}

    def delete_package(self, name: str) -> dict[str, Any]:
        with self.lock:
            if self.packages.pop(name, None) is None:
                raise ServiceError("ValidationException", f"Model package {name} does not exist")
            self._save()
        return {}

    def delete_group(self, name: str) -> dict[str, Any]:
        """As SageMaker: a group that still holds versions is not deleted."""
        with self.lock:
            if name not in self.groups:
                raise ServiceError("ValidationException", f"Model Package Group {name} does not exist")
            if any(p["ModelPackageGroupName"] == name for p in self.packages.values()):
                raise ServiceError("ConflictException", f"Model Package Group {name} still has model packages")
            del self.groups[name]
            self._save()
        return {}

    def list(self, params: Mapping[str, Any]) -> dict[str, Any]:
        group = params.get("ModelPackageGroupName")
        items = [p for p in self.packages.values() if group in (None, p["ModelPackageGroupName"])]
        if params.get("ModelApprovalStatus"):
            items = [p for p in items if p["ModelApprovalStatus"] == params["ModelApprovalStatus"]]
        by = "ModelPackageName" if params.get("SortBy") == "Name" else "CreationTime"
        items.sort(key=lambda p: (p.get(by) or p["ModelPackageArn"], p.get("ModelPackageVersion", 0)))
        if params.get("SortOrder", "Ascending") == "Descending":
            items.reverse()
        start = int(params.get("NextToken") or 0)
        size = int(params.get("MaxResults", 100))
        page = items[start : start + size]
        keys = (
            "ModelPackageGroupName",
            "ModelPackageVersion",
            "ModelPackageArn",
            "ModelApprovalStatus",
            "ModelPackageStatus",
            "CreationTime",
        )
        answer: dict[str, Any] = {"ModelPackageSummaryList": [{k: p[k] for k in keys if k in p} for p in page]}
        if start + size < len(items):
            answer["NextToken"] = str(start + size)
        return answer
