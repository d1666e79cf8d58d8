"""{% poll_status cluster %}: the job poller's last result for a cluster (jobs.pollstate), for its page."""

from django import template

from jobs import pollstate

register = template.Library()


@register.inclusion_tag("clusters/_poll_status.html")
def poll_status(cluster):
    polled = cluster.is_polled
    return {"cluster": cluster, "polled": polled, "poll_state": pollstate.read(cluster) if polled else None}
