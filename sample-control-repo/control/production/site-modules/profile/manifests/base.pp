# Site-wide basics.
class profile::base (
  String $motd,
) {
  class { 'motd':
    content => $motd,
  }
}
