"""`manage.py routing evaluate|tune|drift|set-floor|rollback|history`: the self-tuning of routing by hand."""
from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import QuerySet

from routing import drift, tuning
from routing.models import RoutingPolicy, ThresholdChange


class Command(BaseCommand):
    help = "Routing curves and metrics, the tuner, drift checks, and operators' floors."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        evaluate = actions.add_parser("evaluate", help="The routing curve of each policy and RouteLLM's metrics: PGR, APGR, CPT.")
        evaluate.add_argument("--policy", type=int, help="Only this policy (id).")
        evaluate.add_argument("--days", type=float, help="Window in days (default: each policy's tune window).")
        evaluate.add_argument("--points", type=int, default=11, help="Curve points to print (default 11).")
        tune = actions.add_parser("tune", help="Run the tuner now (every unlocked auto-tune policy, or one).")
        tune.add_argument("--policy", type=int)
        check = actions.add_parser("drift", help="Run the drift check now.")
        check.add_argument("--policy", type=int)
        set_floor = actions.add_parser("set-floor", help="Set a policy's floor by hand (recorded).")
        set_floor.add_argument("policy", type=int)
        set_floor.add_argument("floor", type=float)
        set_floor.add_argument("--reason", default="")
        rollback = actions.add_parser("rollback", help="Return a policy to the floor before a recorded decision.")
        rollback.add_argument("change", type=int, help="The ThresholdChange id (see `history`).")
        history = actions.add_parser("history", help="A policy's floor decisions, newest first.")
        history.add_argument("policy", type=int)
        history.add_argument("--limit", type=int, default=20)

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        if action == "evaluate":
            for policy in self._policies(options.get("policy")):
                self._evaluate(policy, days=options.get("days"), points=options["points"])
        elif action == "tune":
            for policy in self._policies(options.get("policy"), tunable=options.get("policy") is None):
                change = tuning.tune(policy)
                verb = f"{change.old:.3f} → {change.new:.3f}" if change.changed else f"kept {change.new:.3f}"
                self.stdout.write(f"{policy}: {verb}. {change.reason}")
        elif action == "drift":
            for policy in self._policies(options.get("policy")):
                report = drift.check(policy)
                psi = "-" if report.psi is None else f"{report.psi:.3f}"
                self.stdout.write(f"{policy}: {'DRIFT' if report.drifted else 'stable'} (PSI {psi}) {report.message()}")
        elif action == "set-floor":
            policy = self._policy(options["policy"])
            try:
                change = tuning.set_floor(policy, options["floor"], actor="manage.py", reason=options["reason"])
            except ValueError as exc:
                raise CommandError(str(exc)) from None
            self.stdout.write(f"{policy}: {change.old:.3f} → {change.new:.3f}")
        elif action == "rollback":
            target = ThresholdChange.objects.select_related("policy").filter(pk=options["change"]).first()
            if target is None:
                raise CommandError(f"No threshold change {options['change']}.")
            change = tuning.roll_back(target, actor="manage.py")
            self.stdout.write(f"{target.policy}: {change.old:.3f} → {change.new:.3f}")
        elif action == "history":
            policy = self._policy(options["policy"])
            for change in policy.threshold_changes.all()[: options["limit"]]:
                self.stdout.write(f"#{change.pk} {change.created_at:%Y-%m-%d %H:%M} {change.decided_by:<8} "
                                  f"{change.old:.3f} → {change.new:.3f}  {change.reason}")

    def _evaluate(self, policy: RoutingPolicy, *, days: float | None, points: int) -> None:
        evaluation = tuning.evaluate(policy, days=days)
        window = evaluation.window
        self.stdout.write(f"{policy} (#{policy.pk}): floor {policy.confidence_floor:.3f}, "
                          f"{len(window.items)} labelled of {window.records} local answers in {window.days:.1f} days "
                          f"({', '.join(f'{k} {v}' for k, v in sorted(window.by_source.items())) or 'no labels'})")
        if not evaluation.points:
            self.stdout.write("  no labelled records: nothing to evaluate")
            return
        cpt = "  ".join(f"CPT({level:.0%}) {'-' if share is None else f'{share:.1%}'}" for level, share in evaluation.cpt.items())
        self.stdout.write(f"  APGR {evaluation.apgr:.3f}  {cpt}")
        if evaluation.current is not None:
            current = evaluation.current
            self.stdout.write(f"  now: premium {current.premium_share:.1%}, quality {current.quality:.3f}, "
                              f"PGR {current.pgr:.3f}, cost/answer {current.cost:.6f}")
        self.stdout.write(f"  {'floor':>7} {'premium':>8} {'quality':>8} {'PGR':>6} {'cost/answer':>12}")
        shown = evaluation.points if len(evaluation.points) <= points else [
            evaluation.points[round(i * (len(evaluation.points) - 1) / (points - 1))] for i in range(points)
        ]
        for point in shown:
            self.stdout.write(f"  {point.floor:>7.3f} {point.premium_share:>8.1%} {point.quality:>8.3f} "
                              f"{point.pgr:>6.3f} {point.cost:>12.6f}")

    def _policies(self, pk: int | None, *, tunable: bool = False) -> QuerySet[RoutingPolicy]:
        if pk is not None:
            return RoutingPolicy.objects.filter(pk=self._policy(pk).pk)
        policies = RoutingPolicy.objects.select_related("tenant").order_by("pk")
        return policies.filter(auto_tune=True, locked=False) if tunable else policies

    def _policy(self, pk: int) -> RoutingPolicy:
        policy = RoutingPolicy.objects.select_related("tenant").filter(pk=pk).first()
        if policy is None:
            raise CommandError(f"No routing policy {pk}; the admin lists them.")
        return policy
