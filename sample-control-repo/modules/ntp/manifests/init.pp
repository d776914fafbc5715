# Render the time server configuration (shown, not written, in the demo).
class ntp (
  Array[String] $servers = ['pool.ntp.org'],
) {
  $config = epp('ntp/ntp.conf.epp', { 'servers' => $servers })
  notify { 'ntp.conf':
    message => $config,
  }
}
