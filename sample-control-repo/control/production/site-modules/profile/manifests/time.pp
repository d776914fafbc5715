# Time synchronisation through the ntp module.
class profile::time (
  Array[String] $servers,
) {
  class { 'ntp':
    servers => $servers,
  }
}
