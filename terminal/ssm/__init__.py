"""AWS SSM Session Manager data channel: wire format (frames) and the asyncio client (channel).

See docs/ssm-data-channel.md and ../shared/reference/ssm-data-channel.md.
"""
