# Announce the message of the day (a notify keeps the demo harmless).
class motd (
  String $content = 'Managed by Puppet.',
) {
  notify { 'motd':
    message => "motd: ${content}",
  }
}
