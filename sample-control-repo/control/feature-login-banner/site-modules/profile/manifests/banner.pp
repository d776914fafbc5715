# The login banner, with the text under test on this branch.
class profile::banner {
  class { 'banner':
    text => 'Authorised use only. This branch tests the new banner.',
  }
}
